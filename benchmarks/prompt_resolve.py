"""How much resolving ``prompt:NAME`` adds to a request (target: <= 50 µs p50).

Measures ``CachedPromptResolver.resolve`` in process, warm (label snapshot loaded, version
verified and compiled), on the shipped ``support-answer`` prompt: team check, label lookup,
variables validated against the JSON Schema, two templates rendered, parameters applied,
headers added. Building the request context is not counted (every request pays it anyway).

    .venv/bin/python -m benchmarks.prompt_resolve [--iterations 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gateway.audit import AuditLog
from gateway.auth import Principal
from gateway.catalog import build_catalog
from gateway.config.policies import load_policies
from gateway.context import Endpoint, RequestContext
from gateway.prompts import Caller, PromptService
from gateway.prompts.evals import default_evaluators
from gateway.prompts.resolver import CachedPromptResolver
from gateway.prompts.signing import Signer, generate_key
from gateway.prompts.store import PromptStore
from gateway.storage import open_database

REPO = Path(__file__).resolve().parents[1]
VARIABLES = {
    "question": "How long do I have to ask for a refund?",
    "context": [
        {"title": "Refunds", "text": "Annual plans can be refunded within 30 days of purchase."},
        {"title": "Billing", "text": "Invoices are issued on the 1st of each month."},
        {"title": "Plans", "text": "Monthly plans can be cancelled at any time from the billing page."},
    ],
}


async def main(iterations: int) -> None:
    catalog = build_catalog(load_policies(REPO / "policies"))
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(f"sqlite:///{tmp}/bench.db")
        signer = Signer(generate_key())
        store = PromptStore(db)

        async def nothing() -> None:
            return None

        service = PromptService(
            store,
            AuditLog(db),
            signer,
            policy=lambda: catalog.bundle.prompts,
            catalog=lambda: catalog,
            evaluators=default_evaluators(),
            on_change=nothing,
        )
        operator = Caller.operator("bench")
        pushed = await service.push(service.load_file(REPO / "prompts" / "support-answer"), operator, message="bench")
        await store.evals("support-answer")  # warm the connection pool
        await service.set_label(
            "support-answer", "production", pushed.version.version, operator, force=True, reason="benchmark"
        )
        resolver = CachedPromptResolver(store, signer)
        await resolver.refresh()
        principal = Principal("bench", "support", frozenset({"app"}))

        def context() -> RequestContext:
            ctx = RequestContext(
                request_id="bench",
                endpoint=Endpoint.CHAT,
                raw_body=b"",
                authorization=None,
                catalog=catalog,
                principal=principal,
            )
            ctx.body = {"model": "prompt:support-answer", "variables": VARIABLES}
            return ctx

        for _ in range(500):  # warm-up: load, verify and compile the version
            await resolver.resolve(context(), "support-answer")
        samples = []
        for _ in range(iterations):
            ctx = context()
            started = time.perf_counter_ns()
            await resolver.resolve(ctx, "support-answer")
            samples.append(time.perf_counter_ns() - started)
        await db.close()
    samples.sort()
    us = [sample / 1000 for sample in samples]
    print(
        f"prompt resolve ({iterations} requests, warm cache): p50 {statistics.median(us):.1f} µs, "
        f"p90 {us[int(len(us) * 0.9)]:.1f} µs, p99 {us[int(len(us) * 0.99)]:.1f} µs, mean {statistics.fmean(us):.1f} µs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().iterations))
