"""Stage 7, usage: make every answer's token usage and cost final, whoever else is installed.

The upstream reports usage (the gateway asks OpenAI-compatible upstreams to, even in streams);
this stage prices it with the deployment's price. When the upstream reported none, it counts
the usage itself: the prompt from the request (or the count the budget stage already made for
its reservation, ``ctx.prompt_tokens``), the output from the answer tap (``ctx.answer``).
The ledger, the metrics and the budget's settlement all read the result, so it is installed
whenever the ledger is (always), not only for teams with a budget.

A JSON answer is metered before it is returned. A stream is metered by a *meter*
(``ctx.on_meter``), phase 1 of ``RequestContext.finish``: after the last event, before any
usage-known callback (a budget settlement), whatever order the stages registered in.

On the way in, it also applies chat deployments' context windows (``max_input_tokens``, from
``models.yaml`` or litellm's price map): a deployment whose window the prompt exceeds is
skipped for the next one in the plan instead of failing upstream, and when none fits the
request is a 400 ``context_length_exceeded``. The prompt is counted only when its size could
matter: a prompt has at most about twice as many tokens as its JSON has bytes, so a request
smaller than half the smallest window is never counted for this. A count made here is left on
``ctx.prompt_tokens``, where the budget stage and the meter find it.

Tokenizers are built only when needed (see ``gateway.usage.tokens``). A JSON answer awaits
one; a stream's meter cannot wait, so without a built tokenizer it *defers* the count
(``ctx.defer``): the settlement, and the record stage's recording, happen once it is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson

from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.errors import ContextLengthExceeded
from gateway.pipeline_types import Handler
from gateway.usage.tokens import (
    BYTE_BOUND,
    LARGE_TEXT_CHARACTERS,
    ByteBound,
    TokenCounter,
    Tokenizer,
    count_output,
)

if TYPE_CHECKING:
    from gateway.catalog import Deployment

log = logging.getLogger("gateway.usage")

# Texts larger than this (8 KiB) are counted on a worker thread, by tiktoken's encoder (which
# lets go of the GIL), so the event loop keeps serving.
_THREAD_COUNT_BYTES = LARGE_TEXT_CHARACTERS


def price_usage(ctx: RequestContext) -> None:
    """Turn the usage the upstream reported into money, with the deployment that answered."""
    if ctx.usage is not None and ctx.deployment is not None:
        ctx.cost = ctx.deployment.price.cost(ctx.usage.prompt_tokens, ctx.usage.completion_tokens)


class MeterUsage:
    """Pipeline stage (see the module docstring)."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: TokenCounter) -> None:
        self.tokens = tokens

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        if _window_may_matter(ctx):
            await self._fit_windows(ctx)
        reply = await call_next(ctx)
        if isinstance(reply, JsonReply):
            await self._meter_json(ctx, reply)
        else:
            ctx.on_meter(self._meter_stream)
        return reply

    async def prompt_tokens(self, ctx: RequestContext) -> dict[str, int]:
        """Prompt tokens per deployment id, counted once per distinct tokenizer (usually one).

        The budget stage asks for them before its reservation (it is a ``PromptCounter``).
        Waits for tokenizers still being built (on worker threads, shared with every request
        that needs the same one): a reservation must not be guessed.
        """
        deployments = ctx.deployments
        large = _prompt_bytes(ctx) > _THREAD_COUNT_BYTES
        found = [self.tokens.built(deployment) for deployment in deployments]
        if large or any(tokenizer is None for tokenizer in found):
            found = list(await asyncio.gather(*(self.tokens.tokenizer(d, fast=large) for d in deployments)))
        tokenizers: list[Tokenizer] = [tokenizer for tokenizer in found if tokenizer is not None]
        endpoint = "embeddings" if ctx.endpoint is Endpoint.EMBEDDINGS else "chat"

        def count() -> dict[str, int]:
            counted: dict[int, int] = {}
            prompt: dict[str, int] = {}
            for deployment, tokenizer in zip(deployments, tokenizers, strict=True):
                tokens = counted.get(id(tokenizer))
                if tokens is None:
                    tokens = counted[id(tokenizer)] = TokenCounter.count_prompt(tokenizer, endpoint, ctx.body)
                prompt[deployment.id] = tokens
            return prompt

        if large:
            return await asyncio.to_thread(count)
        return count()

    def prompt_bound(self, ctx: RequestContext) -> int:
        """An upper bound of the prompt's tokens on any deployment, without a tokenizer.

        One token per UTF-8 byte of what the exact count reads (see ``ByteBound``): microseconds,
        and no tokenizer to build (3-6 MiB and ~0.3 s each). The budget stage reserves with it
        and asks for the exact count only when the bound is refused.
        """
        endpoint = "embeddings" if ctx.endpoint is Endpoint.EMBEDDINGS else "chat"
        return TokenCounter.count_prompt(BYTE_BOUND, endpoint, ctx.body)

    async def _fit_windows(self, ctx: RequestContext) -> None:
        """Keep the deployments whose context window holds the prompt (see the module docstring)."""
        prompt = await self.prompt_tokens(ctx)
        ctx.prompt_tokens = prompt
        fits = tuple(d for d in ctx.deployments if d.max_input_tokens is None or prompt[d.id] <= d.max_input_tokens)
        if not fits:
            smallest = min(prompt.values())
            largest = max(d.max_input_tokens or 0 for d in ctx.deployments)
            raise ContextLengthExceeded(
                f"The prompt has {smallest} tokens, more than the context window of every deployment this "
                f"request may use (the largest holds {largest}); shorten the messages.",
                param="messages",
            )
        ctx.deployments = fits

    def prepare(self, deployments: Iterable[Deployment]) -> None:
        """Start building, in the background, the tokenizers ``deployments`` will need."""
        self.tokens.prepare(deployments)

    async def _meter_json(self, ctx: RequestContext, reply: JsonReply) -> None:
        """Price a JSON answer's reported usage, or count it when there is none.

        Awaits the tokenizer if it is not built yet; if the request is cancelled meanwhile (the
        caller hung up), the count is deferred, so the spend is still counted, settled and
        recorded, once.
        """
        if ctx.usage is not None:
            price_usage(ctx)
            return
        deployment = ctx.deployment
        if deployment is None or reply.status != 200:
            return
        answer = ctx.answer
        text = answer.output_text if ctx.endpoint is Endpoint.CHAT and answer is not None else ""
        large = _large_count(ctx, deployment, text)
        tokenizer = self.tokens.built(deployment)
        if tokenizer is not None and not large:
            self._count_with(ctx, tokenizer, text)
            return
        await self._count_when_ready(
            ctx, deployment, text, large, on_cancel=lambda: self._count_later(ctx, deployment, text, large)
        )

    def _meter_stream(self, ctx: RequestContext) -> None:
        """Meter of a stream: price its usage, or count it if none was reported.

        Cannot wait: without a built tokenizer the count is deferred (settlement and recording
        wait for it). The answer is reduced to its text at once, so a deferred count holds only that.
        """
        if ctx.usage is not None:
            price_usage(ctx)
            return
        deployment = ctx.deployment
        answer = ctx.answer
        if deployment is None or answer is None or answer.empty:
            return  # nothing was relayed: nothing to charge
        text = answer.output_text
        tokenizer = self.tokens.built(deployment)
        prompt = ctx.prompt_tokens
        large = _large_count(ctx, deployment, text)
        if tokenizer is not None and not large:
            self._count_with(ctx, tokenizer, text)
        elif not text and prompt is not None and deployment.id in prompt:
            _set_usage(ctx, prompt[deployment.id], 0)  # no output, and the prompt is known
        else:
            self._count_later(ctx, deployment, text, large)

    def _count_later(self, ctx: RequestContext, deployment: Deployment, text: str, large: bool) -> None:
        """Defer the count until the deployment's tokenizer is built (see ``RequestContext.defer``)."""

        def now() -> None:
            # Builds inline if it must (or waits for the build in flight): blocks the loop, but
            # only when nothing can wait (see the record stage), and the spend is never lost.
            self._count_with(ctx, self.tokens.for_deployment(deployment), text)

        async def wait() -> None:
            await self._count_when_ready(ctx, deployment, text, large, on_cancel=now)

        ctx.defer(wait, now)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to build on: whoever takes the work calls `now`
        self.tokens.prepare((deployment,))  # start the build now, not when the record's task runs

    async def _count_when_ready(
        self, ctx: RequestContext, deployment: Deployment, text: str, large: bool, *, on_cancel: Callable[[], None]
    ) -> None:
        """Count once the deployment's tokenizer is built (with tiktoken's encoder, on a worker
        thread, when ``large``: see ``_large_count``). The build itself is not cancelled; a
        cancelled wait calls ``on_cancel`` so that the spend is still counted."""
        tokenizer: Tokenizer
        try:
            tokenizer = await self.tokens.tokenizer(deployment, fast=large)
        except asyncio.CancelledError:
            on_cancel()
            raise
        except Exception:
            tokenizer = self._no_tokenizer(ctx, deployment)
        if large:
            await asyncio.to_thread(self._count_with, ctx, tokenizer, text)
        else:
            self._count_with(ctx, tokenizer, text)

    @staticmethod
    def _no_tokenizer(ctx: RequestContext, deployment: Deployment) -> Tokenizer:
        """Not expected (a failed build gives ByteBound already): an upper bound still counts,
        and a budget reservation is settled rather than leaked."""
        log.exception("no tokenizer for %s", deployment.label, extra={"request_id": ctx.request_id})
        return ByteBound()

    def _count_with(self, ctx: RequestContext, tokenizer: Tokenizer, text: str) -> None:
        """Set the usage and cost from the answer's ``text`` and the prompt."""
        deployment = ctx.deployment
        assert deployment is not None
        prompt = ctx.prompt_tokens
        if prompt is not None and deployment.id in prompt:
            prompt_tokens = prompt[deployment.id]
        else:
            endpoint = "embeddings" if ctx.endpoint is Endpoint.EMBEDDINGS else "chat"
            prompt_tokens = self.tokens.count_prompt(tokenizer, endpoint, ctx.body)
        _set_usage(ctx, prompt_tokens, count_output(tokenizer, text))


def _large_count(ctx: RequestContext, deployment: Deployment, text: str) -> bool:
    """Whether counting this answer (and its prompt, if not counted yet) is too much for the
    event loop: then it is counted on a worker thread, by tiktoken's encoder (which lets go of
    the GIL while it counts), built for it if need be."""
    if len(text) > _THREAD_COUNT_BYTES:
        return True
    prompt = ctx.prompt_tokens
    return (prompt is None or deployment.id not in prompt) and _prompt_bytes(ctx) > _THREAD_COUNT_BYTES


def _prompt_bytes(ctx: RequestContext) -> int:
    """The size of what a prompt count reads: the body sent, or, for a prompt from the
    repository, the rendered body (a template can be far larger than what was sent)."""
    if ctx.prompt_name is not None:
        return len(orjson.dumps(ctx.body))
    return len(ctx.raw_body)


def _window_may_matter(ctx: RequestContext) -> bool:
    """Whether the prompt could exceed one of the deployments' context windows: only then is it
    counted. Tokens never exceed twice the JSON bytes (BPE tokens are at least a byte of text,
    and each message's few tokens of framing take more JSON bytes than that). Chat only: an
    embedding model's limit is per input, and a batch of short inputs may exceed it in sum."""
    if ctx.endpoint is not Endpoint.CHAT:
        return False
    smallest = 0
    for deployment in ctx.deployments:
        limit = deployment.max_input_tokens
        if limit is not None and (not smallest or limit < smallest):
            smallest = limit
    if not smallest:
        return False
    return 2 * _prompt_bytes(ctx) + 16 > smallest


def _set_usage(ctx: RequestContext, prompt_tokens: int, completion_tokens: int) -> None:
    assert ctx.deployment is not None
    ctx.usage = Usage(prompt_tokens, completion_tokens)
    ctx.cost = ctx.deployment.price.cost(prompt_tokens, completion_tokens)
