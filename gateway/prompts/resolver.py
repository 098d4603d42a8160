"""The prompt half of the resolve stage: ``prompt:NAME[@LABEL|@vN]`` → messages, parameters, alias.

A request never waits on storage for a prompt it has seen before. Two in-process caches serve
it: a snapshot of every label (replaced whole when a replica notices a move, see
``gateway.prompts.sync``) and the versions already loaded, each verified once against its
signature and compiled once (templates and the variables' JSON Schema validator). A version is
immutable, so a cached one never goes stale; only the labels move.

A version that fails its integrity check is refused with a 500 and counted in
``gateway_prompt_integrity_failures_total``; the refusal is remembered for a few seconds so a
flood of requests does not turn into a flood of queries.

Order of checks, each naming what is wrong: the team may call the prompt (403), the prompt,
label or version exists (404), the variables match the schema (400), the templates render
(400), the caller overrides only parameters policy allows (400).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.catalog import Team
from gateway.context import RequestContext
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.prompts.errors import PromptIntegrityError, RenderError
from gateway.prompts.limits import INLINE_RENDER_S, RenderLimits
from gateway.prompts.refs import LATEST, PRODUCTION
from gateway.prompts.signing import Signer, integrity_problem
from gateway.prompts.store import PromptStore
from gateway.scoring.context import context_variable

if TYPE_CHECKING:
    from gateway.prompts.render import CompiledPrompt
    from gateway.prompts.source import PromptSpec
    from gateway.prompts.variables import VariablesValidator

log = logging.getLogger("gateway.prompts")

_MAX_LISTED = 5  # variable problems named in one error message
_CLIP = 160  # jsonschema quotes the offending value; a caller's megabyte must not come back


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """Everything serving one version needs, prepared once when it is first loaded."""

    name: str
    version: int
    alias: str
    compiled: CompiledPrompt
    variables: VariablesValidator
    parameters: tuple[tuple[str, Any], ...]  # read-only: shared by every request of this version
    headers: tuple[tuple[bytes, bytes], ...]
    data_class: str | None = None  # the class the version declares
    context_variable: str | None = None  # the variable answers are scored against (gateway.scoring.context)


def prepare(spec: PromptSpec, version: int) -> ServedVersion:
    # Imported on the first version served, not at start-up: Jinja2 and the JSON Schema
    # libraries cost ~100 ms of start-up, wasted on a gateway that serves no prompt.
    from gateway.prompts.render import compile_prompt
    from gateway.prompts.variables import VariablesValidator

    return ServedVersion(
        name=spec.name,
        version=version,
        alias=spec.model,
        compiled=compile_prompt(spec.message_templates()),
        variables=VariablesValidator(spec.variables),
        parameters=tuple(spec.parameters.as_body().items()),
        headers=((b"x-prompt-name", spec.name.encode()), (b"x-prompt-version", str(version).encode())),
        data_class=spec.data_class,
        context_variable=context_variable(spec.variables),
    )


class VersionChooser(Protocol):
    """Picks another version than the label's for this request (a rollout's canary), or None."""

    def choose(self, ctx: RequestContext, name: str, label: str, latest: int) -> int | None: ...


class CachedPromptResolver:
    """Implements ``gateway.resolve.PromptResolver`` from in-process caches."""

    def __init__(
        self,
        store: PromptStore,
        signer: Signer,
        *,
        on_integrity_failure: Callable[[str], None] | None = None,
        max_versions: int = 4096,
        failure_ttl_s: float = 5.0,
        render_limits: RenderLimits | None = None,
        version_chooser: VersionChooser | None = None,
    ) -> None:
        self._store = store
        self._chooser = version_chooser
        self._render_limits = render_limits or RenderLimits()
        self._inline_limits = dataclasses.replace(
            self._render_limits, timeout_s=min(INLINE_RENDER_S, self._render_limits.timeout_s)
        )
        self._signer = signer
        self._on_integrity_failure = on_integrity_failure
        self._max_versions = max_versions
        self._failure_ttl = failure_ttl_s
        self._labels: dict[str, dict[str, int]] = {}
        self._revision = -1
        self._versions: OrderedDict[tuple[str, int], ServedVersion] = OrderedDict()
        self._failures: dict[tuple[str, int], float] = {}
        self._refreshing = asyncio.Lock()

    @property
    def revision(self) -> int:
        return self._revision

    def labels(self, name: str) -> dict[str, int]:
        return dict(self._labels.get(name, {}))

    async def refresh(self) -> bool:
        """Reload the label snapshot if any label moved since the last load; True if it did."""
        async with self._refreshing:
            if await self._store.revision() == self._revision:
                return False
            revision, labels = await self._store.snapshot()
            self._labels = labels  # one reference swap: a request sees the old or the new map
            self._revision = revision
            return True

    async def resolve(self, ctx: RequestContext, reference: str) -> str:
        name, _, selector = reference.partition("@")
        team = ctx.catalog.team(ctx.team)
        if team is None or not team.allows_prompt(name):
            raise PermissionDenied(f"Team '{ctx.team}' may not use the prompt '{name}'.", param="model",
                                   code="prompt_not_allowed")
        labels = self._labels.get(name)
        if labels is None:
            raise NotFound(f"The prompt '{name}' does not exist; GET /v1/models lists the prompts this key may call.",
                           param="model", code="prompt_not_found")
        label: str | None
        if selector[:1] == "v" and selector[1:].isdigit():
            label, version = None, int(selector[1:])
            latest = labels.get(LATEST, 0)
            if not 1 <= version <= latest:
                raise NotFound(f"The prompt '{name}' has no version v{version} (the latest is v{latest}).",
                               param="model", code="prompt_version_not_found")
        else:
            label = selector or PRODUCTION
            found = labels.get(label)
            if found is None:
                hint = f"; call 'prompt:{name}@latest' or promote a version" if label == PRODUCTION else ""
                raise NotFound(f"The prompt '{name}' has no label '{label}'{hint}.", param="model",
                               code="prompt_label_not_found")
            version = found
            if self._chooser is not None:
                version = self._chooser.choose(ctx, name, label, labels.get(LATEST, 0)) or version
        served = self._versions.get((name, version))
        if served is None:
            served = await self._load(name, version)
        await self._apply(ctx, served)
        ctx.prompt_name = name
        ctx.prompt_version = version
        ctx.prompt_label = label
        ctx.prompt_data_class = served.data_class
        ctx.extra_headers.extend(served.headers)
        return served.alias

    async def _render(self, served: ServedVersion, variables: dict[str, Any]) -> list[dict[str, Any]]:
        """Render on the event loop for at most ``INLINE_RENDER_S``; a template that needs
        longer is rendered again, from the start, on a worker thread within the full limits.

        A real prompt renders in tens of microseconds, so the inline attempt is the only one it
        makes; a runaway template holds the loop ~2 ms, not its whole budget, and the rest runs
        where it cannot stall other requests. Rendering has no side effects: starting over is safe.
        """
        compiled = served.compiled
        if compiled.is_static:
            return compiled.render(variables)
        try:
            return compiled.render(variables, self._inline_limits)
        except RenderError as exc:
            if not exc.timed_out or self._render_limits.timeout_s <= INLINE_RENDER_S:
                raise
        return await asyncio.to_thread(compiled.render, variables, self._render_limits)

    async def _apply(self, ctx: RequestContext, served: ServedVersion) -> None:
        body = ctx.body
        # `variables` is the gateway's field, not the model's: it never goes upstream.
        variables = body.pop("variables", None)
        if variables is None:
            variables = {}
        elif not isinstance(variables, dict):
            raise InvalidRequest("'variables' must be an object of template variables.", param="variables",
                                 code="invalid_variables")
        problems = served.variables.problems(variables)
        if problems:
            listed = "; ".join(f"{param}: {_clip(problem)}" for param, problem in problems[:_MAX_LISTED])
            more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
            raise InvalidRequest(f"Invalid variables for the prompt '{served.name}' v{served.version}: {listed}{more}.",
                                 param=problems[0][0], code="invalid_variables")
        try:
            messages = await self._render(served, variables)
        except RenderError as exc:
            raise InvalidRequest(f"The prompt '{served.name}' v{served.version} failed to render: {exc}.",
                                 param="variables", code="prompt_render_failed") from None
        if ctx.scoring_context is None and served.context_variable is not None:
            ctx.scoring_context = variables.get(served.context_variable)
        caller = body.get("messages")
        body["messages"] = messages + caller if caller else messages
        if served.parameters:
            overridable = ctx.catalog.bundle.prompts.caller_overrides
            for key, value in served.parameters:
                if key not in body:
                    body[key] = value
                elif key not in overridable:
                    raise InvalidRequest(
                        f"The prompt '{served.name}' sets '{key}' and policy does not let callers override it.",
                        param=key, code="parameter_not_overridable",
                    )

    async def _load(self, name: str, version: int) -> ServedVersion:
        key = (name, version)
        refused_until = self._failures.get(key)
        if refused_until is not None and refused_until > time.monotonic():
            raise self._refuse(name, version)
        record = await self._store.version(name, version)
        if record is None:
            raise NotFound(f"The prompt '{name}' has no version v{version}.", param="model",
                           code="prompt_version_not_found")
        problem = integrity_problem(record, self._signer)
        if problem is not None:
            log.error("refusing to serve a prompt version that fails its integrity check",
                      extra={"prompt": name, "version": version, "problem": problem})
            self._failures[key] = time.monotonic() + self._failure_ttl
            raise self._refuse(name, version)
        self._failures.pop(key, None)
        from gateway.prompts.source import spec_from_content  # see prepare()

        served = prepare(spec_from_content(record.content), version)
        self._versions[key] = served
        if len(self._versions) > self._max_versions:
            self._versions.popitem(last=False)  # oldest loaded first: rarely used old versions
        return served

    def _refuse(self, name: str, version: int) -> PromptIntegrityError:
        if self._on_integrity_failure is not None:
            self._on_integrity_failure(name)
        return PromptIntegrityError(
            f"The prompt '{name}' v{version} failed its integrity check (its stored content does not match its "
            "signature) and is not served; re-push it or move the label to a good version.",
        )

    async def list_models(self, team: Team, created: int) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries for the prompts ``team`` may call: one per label."""
        entries = []
        for name, labels in sorted(self._labels.items()):
            if not team.allows_prompt(name):
                continue
            for label in sorted(labels, key=lambda item: (item != PRODUCTION, item)):
                model_id = f"prompt:{name}" if label == PRODUCTION else f"prompt:{name}@{label}"
                entries.append({"id": model_id, "object": "model", "created": created, "owned_by": "prompts"})
        return entries
