"""Prompt versions and label moves mirrored into Langfuse prompt management, in the background.

Langfuse's per-version metrics (latency, cost, scores) work when a generation names a prompt
version Langfuse knows. So every version pushed to the gateway is created in Langfuse
(``POST /api/public/v2/prompts``), and every label move is repeated there
(``PATCH /api/public/v2/prompts/{name}/versions/{version}``, ``newLabels``). Which Langfuse
version each gateway version became is stored (``langfuse_prompt_versions``, migration 61), and
the spans name that version (``prompt_versions`` below is the lookup ``SpanBuilder`` uses).

Never in the way: a push only writes the gateway's own tables. This loop looks for what is not
mirrored yet every ``tracing.mirror_interval_s`` on every replica, whoever pushed (the CLI, the
admin API, another replica), and retries until Langfuse takes it; a Langfuse outage delays the
mirror, never a push. Replicas share the work through a claim row: the one that inserts the
row sends the version; a claim older than ``STALE_CLAIM_S`` is taken over. A retry first asks
Langfuse for its latest version of the prompt and adopts it when it already holds the same
content (the earlier attempt arrived but its answer was lost), so a version is not created twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.storage.schema import (
    langfuse_prompt_labels,
    langfuse_prompt_versions,
    prompt_labels,
    prompt_versions,
)
from gateway.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from prometheus_client import Counter

    from gateway.config.settings import TracingSettings
    from gateway.storage import Database

log = logging.getLogger("gateway.tracing.prompts")

PROMPTS_PATH = "/api/public/v2/prompts"
#: A claim this old whose version is still not mirrored belongs to a replica that gave up or died.
STALE_CLAIM_S = 60.0
#: Labels Langfuse manages itself.
LANGFUSE_LABELS = frozenset({"latest"})
LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Pending:
    name: str
    version: int
    sha256: str
    content: str
    message: str
    claimed: bool  # already claimed by someone (an earlier attempt, maybe this replica's)


def langfuse_prompt(name: str, version: int, sha256: str, content: str, message: str) -> dict[str, Any]:
    """The body Langfuse's create-prompt endpoint takes, from a stored version's canonical JSON."""
    spec = orjson.loads(content)
    config: dict[str, Any] = {
        "model": spec.get("model"),
        "gateway_version": version,
        "gateway_sha256": sha256,
    }
    parameters = {key: value for key, value in (spec.get("parameters") or {}).items() if value is not None}
    if parameters:
        config["parameters"] = parameters
    body: dict[str, Any] = {
        "name": name,
        "config": config,
        "labels": [],  # label moves are mirrored one by one, as they happened
        "tags": list(spec.get("tags") or []),
        "commitMessage": f"gateway v{version}: {message}"[:500],
    }
    if spec.get("type", "chat") == "text":
        body["type"] = "text"
        body["prompt"] = spec.get("template") or ""
    else:
        body["type"] = "chat"
        body["prompt"] = [
            {"role": message_spec["role"], "content": message_spec["content"]} for message_spec in spec["messages"]
        ]
    return body


class PromptMirror:
    """The mirroring loop and the (name, gateway version) -> Langfuse version lookup."""

    def __init__(self, settings: TracingSettings, db: Database, *, mirrored: Counter) -> None:
        self.settings = settings
        self.db = db
        self.base = settings.langfuse_url + PROMPTS_PATH
        credentials = f"{settings.public_key}:{settings.secret_key.get_secret_value()}"
        self._headers = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
        self._mirrored = mirrored
        self._versions: dict[tuple[str, int], int] = {}
        self._replica = f"{os.uname().nodename[:40]}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._warning = ThrottledLog(log, every_s=LOG_EVERY_S)

    # -- read by the span builder (background) ---------------------------------------------------

    def langfuse_version(self, name: str, version: int) -> int | None:
        return self._versions.get((name, version))

    # -- the loop ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="prompt-mirror")

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as error:  # storage or Langfuse trouble: try again next round
                self._warning.log("prompt mirroring failed; retrying", error=type(error).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.mirror_interval_s)
            self._wake.clear()

    async def sync(self) -> bool:
        """One round: send unmirrored versions, then label moves. True when nothing is left."""
        await self._load_versions()
        done = True
        failed_names: set[str] = set()
        for item in await self._pending():
            if item.name in failed_names:
                continue  # keep a prompt's versions in order: the next round starts from this one
            if not await self._claim(item):
                continue
            if not await self._mirror_version(item):
                failed_names.add(item.name)
                done = False
        return await self._mirror_labels() and done

    async def _load_versions(self) -> None:
        query = select(
            langfuse_prompt_versions.c.name,
            langfuse_prompt_versions.c.version,
            langfuse_prompt_versions.c.langfuse_version,
        ).where(langfuse_prompt_versions.c.langfuse_version.is_not(None))
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        self._versions = {(name, version): int(mirrored) for name, version, mirrored in rows}

    async def _pending(self) -> list[Pending]:
        mirror = langfuse_prompt_versions
        query = (
            select(
                prompt_versions.c.name,
                prompt_versions.c.version,
                prompt_versions.c.sha256,
                prompt_versions.c.content,
                prompt_versions.c.message,
                mirror.c.claimed_at,
            )
            .select_from(
                prompt_versions.outerjoin(
                    mirror, and_(mirror.c.name == prompt_versions.c.name, mirror.c.version == prompt_versions.c.version)
                )
            )
            .where(mirror.c.langfuse_version.is_(None))
            .order_by(prompt_versions.c.name, prompt_versions.c.version)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Pending(name, version, sha, content, message, claimed_at is not None)
            for name, version, sha, content, message, claimed_at in rows
        ]

    async def _claim(self, item: Pending) -> bool:
        """Take the version for this replica (or keep it, when the claim is ours or stale)."""
        now = datetime.now(UTC)
        table = langfuse_prompt_versions
        if not item.claimed:
            try:  # its own transaction: on PostgreSQL a failed insert ends the one it is in
                async with self.db.engine.begin() as conn:
                    await conn.execute(insert(table).values(
                        name=item.name, version=item.version, claimed_by=self._replica, claimed_at=now, attempts=0))
            except IntegrityError:  # another replica claimed it first
                return False
            return True
        stale = now - timedelta(seconds=STALE_CLAIM_S)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.name == item.name, table.c.version == item.version,
                       table.c.langfuse_version.is_(None))
                .where((table.c.claimed_by == self._replica) | (table.c.claimed_at < stale))
                .values(claimed_by=self._replica, claimed_at=now)
            )
        return bool(result.rowcount)

    async def _mirror_version(self, item: Pending) -> bool:
        table = langfuse_prompt_versions
        error: str | None = None
        langfuse_version: int | None = None
        try:
            if item.claimed:  # tried before: the create may have arrived with its answer lost
                langfuse_version = await self._already_there(item)
            if langfuse_version is None:
                body = langfuse_prompt(item.name, item.version, item.sha256, item.content, item.message)
                answer = await self._call("POST", self.base, body)
                langfuse_version = int(answer["version"])
        except Exception as problem:  # Langfuse down, failing, or a body it refused: retried
            error = f"{type(problem).__name__}: {problem}"[:300]
        async with self.db.engine.begin() as conn:
            where = (table.c.name == item.name) & (table.c.version == item.version)
            if langfuse_version is None:
                await conn.execute(update(table).where(where).values(attempts=table.c.attempts + 1, last_error=error))
            else:
                await conn.execute(
                    update(table)
                    .where(where)
                    .values(
                        langfuse_version=langfuse_version,
                        mirrored_at=datetime.now(UTC),
                        last_error=None,
                        attempts=table.c.attempts + 1,
                    )
                )
        if langfuse_version is None:
            self._mirrored.labels("version", "failed").inc()
            self._warning.log(
                "could not mirror a prompt version into Langfuse; will retry",
                prompt=item.name,
                version=item.version,
                error=error,
            )
            return False
        self._versions[(item.name, item.version)] = langfuse_version
        self._mirrored.labels("version", "mirrored").inc()
        log.info(
            "prompt version mirrored into Langfuse",
            extra={"prompt": item.name, "version": item.version, "langfuse_version": langfuse_version},
        )
        return True

    async def _already_there(self, item: Pending) -> int | None:
        try:
            found = await self._call("GET", f"{self.base}/{quote(item.name, safe='')}?label=latest", None)
        except LookupError:
            return None
        config = found.get("config") if isinstance(found, dict) else None
        if isinstance(config, dict) and config.get("gateway_sha256") == item.sha256:
            return int(found["version"])
        return None

    async def _mirror_labels(self) -> bool:
        async with self.db.engine.connect() as conn:
            wanted = (
                await conn.execute(select(prompt_labels.c.name, prompt_labels.c.label, prompt_labels.c.version))
            ).all()
            there = {
                (name, label): int(version)
                for name, label, version in (
                    await conn.execute(
                        select(
                            langfuse_prompt_labels.c.name,
                            langfuse_prompt_labels.c.label,
                            langfuse_prompt_labels.c.langfuse_version,
                        )
                    )
                ).all()
            }
        done = True
        for name, label, version in wanted:
            if label in LANGFUSE_LABELS:
                continue
            target = self._versions.get((name, version))
            if target is None:
                done = False  # its version is not in Langfuse yet
                continue
            if there.get((name, label)) == target:
                continue
            try:
                await self._call(
                    "PATCH", f"{self.base}/{quote(name, safe='')}/versions/{target}", {"newLabels": [label]}
                )
            except Exception as problem:
                self._mirrored.labels("label", "failed").inc()
                self._warning.log(
                    "could not mirror a label move into Langfuse; will retry",
                    prompt=name,
                    label=label,
                    error=f"{type(problem).__name__}: {problem}"[:300],
                )
                done = False
                continue
            await self._store_label(name, label, version, target, known=(name, label) in there)
            self._mirrored.labels("label", "mirrored").inc()
        return done

    async def _store_label(self, name: str, label: str, version: int, target: int, *, known: bool) -> None:
        table = langfuse_prompt_labels
        values = {"version": version, "langfuse_version": target, "mirrored_at": datetime.now(UTC)}
        if not known:
            try:  # its own transaction (see _claim)
                async with self.db.engine.begin() as conn:
                    await conn.execute(insert(table).values(name=name, label=label, **values))
                return
            except IntegrityError:  # another replica stored it first: update it below
                pass
        async with self.db.engine.begin() as conn:
            await conn.execute(update(table).where(table.c.name == name, table.c.label == label).values(**values))

    async def _call(self, method: str, url: str, body: dict[str, Any] | None) -> Any:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                connector=aiohttp.TCPConnector(limit=2),
            )
        data = orjson.dumps(body) if body is not None else None
        headers = {**self._headers, "Content-Type": "application/json"}
        async with session.request(method, url, data=data, headers=headers) as response:
            text = await response.read()
            if response.status == 404:
                raise LookupError("not found")
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}")
            return orjson.loads(text) if text else None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
