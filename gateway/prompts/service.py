"""The prompt repository's operations, shared by the CLI and the admin API.

push, label set, promote, rollback, list, show, history, diff and eval live here once, with the
role checks and the evaluation gate, so the two shells cannot drift apart. Who may do what:

* push: ``author`` (or ``admin``);
* move an unprotected label (``staging``, ``canary``...): ``author``, ``approver`` or ``admin``;
* move a protected label (policy ``protected_labels``, default ``production``): ``approver`` or
  ``admin``, and only to a version whose most recent evaluation passed, unless forced with a
  reason; a forced move is audited as ``prompt.promote.forced`` with that reason;
* roll a label back: the same role as moving it; no evaluation is needed, because the version
  it returns to already held that label (rolling back must work in an emergency);
* evaluate, and read anything: ``author``, ``approver`` or ``admin``.

Every change is appended to the audit log right after it commits (``prompt.push``,
``prompt.label``, ``prompt.promote``, ``prompt.rollback``, ``prompt.promote.forced``), then
announced to the replicas through ``on_change``, which must not raise (replicas that miss the
announcement still poll).
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from gateway.audit import Actor, AuditLog
from gateway.auth import Principal
from gateway.catalog import Catalog
from gateway.config.policies import PromptsPolicy
from gateway.errors import InvalidRequest, NotFound, PermissionDenied, ServiceUnavailable
from gateway.prompts.errors import InvalidPrompt, PromptIntegrityError
from gateway.prompts.evals import EvalRunner, EvaluatorSet
from gateway.prompts.refs import LATEST, PromptRef, label_problem, parse_reference, parse_version
from gateway.prompts.signing import Signer, integrity_problem
from gateway.prompts.source import (
    PromptSource,
    PromptSpec,
    SourceError,
    load_source,
    parse_source,
    render_source,
    spec_from_content,
)
from gateway.prompts.store import EvalRecord, LabelMove, LabelTransaction, PromptStore, PromptSummary, VersionRecord

_PUSH_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is acting: the audit actor, the roles that decide what is allowed, a display name."""

    actor: Actor
    roles: frozenset[str]
    author: str

    @classmethod
    def of(cls, principal: Principal) -> Caller:
        return cls(Actor(principal.key_id, principal.team), principal.roles, f"{principal.key_id} ({principal.team})")

    @classmethod
    def operator(cls, name: str) -> Caller:
        """The CLI: whoever runs it can read the config and the database, so it acts as admin.
        The evaluation gate still applies to protected labels (``--force --reason`` to bypass)."""
        return cls(Actor.cli(name), frozenset({"admin"}), name)

    def has(self, *roles: str) -> bool:
        return "admin" in self.roles or any(role in self.roles for role in roles)

    def require(self, *roles: str, doing: str) -> None:
        if not self.has(*roles):
            held = ", ".join(sorted(self.roles)) or "none"
            raise PermissionDenied(f"{doing} needs the {' or '.join((*roles, 'admin'))} role (this key has: {held}).",
                                   code="insufficient_role")


@dataclass(frozen=True, slots=True)
class PushResult:
    version: VersionRecord
    created: bool  # False: identical content was already this version
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LabelResult:
    name: str
    label: str
    from_version: int | None
    to_version: int
    changed: bool
    forced: bool = False
    eval_id: int | None = None


@dataclass(frozen=True, slots=True)
class VersionView:
    record: VersionRecord
    spec: PromptSpec | None  # None when the stored content fails its integrity check
    integrity: str | None  # None when verified, else the problem
    labels: dict[str, int]
    latest_eval: EvalRecord | None
    source: str


@dataclass(frozen=True, slots=True)
class History:
    name: str
    versions: list[VersionRecord]
    moves: list[LabelMove]
    labels: dict[str, int]


class PromptService:
    def __init__(
        self,
        store: PromptStore,
        audit: AuditLog,
        signer: Signer,
        *,
        policy: Callable[[], PromptsPolicy],
        catalog: Callable[[], Catalog],
        evaluators: EvaluatorSet,
        on_change: Callable[[], Awaitable[None]],
        runner: EvalRunner | None = None,
    ) -> None:
        self.store = store
        self._audit = audit
        self._signer = signer
        self._policy = policy  # getters: `gateway policies apply` swaps policies at run time
        self._catalog = catalog
        self.evaluators = evaluators
        self._on_change = on_change
        self._runner = runner

    # -- sources ---------------------------------------------------------------------------

    def _model_kinds(self) -> dict[str, str]:
        return {name: alias.kind for name, alias in self._catalog().aliases.items()}

    def load_file(self, path: Path) -> PromptSource:
        try:
            return load_source(path, evaluators=self.evaluators, model_kinds=self._model_kinds())
        except SourceError as exc:
            raise InvalidPrompt(exc.problems) from None

    def parse_text(self, text: str, *, dataset: str | None = None, origin: str = "source") -> PromptSource:
        try:
            return parse_source(text, origin, dataset_text=dataset, evaluators=self.evaluators,
                                model_kinds=self._model_kinds())
        except SourceError as exc:
            raise InvalidPrompt(exc.problems) from None

    # -- changes ---------------------------------------------------------------------------

    async def push(
        self, source: PromptSource, caller: Caller, *, message: str, ticket: str | None = None
    ) -> PushResult:
        """Store ``source`` as the next version (or return the version that already has it)."""
        caller.require("author", doing="Pushing a prompt")
        if not message.strip():
            raise InvalidRequest("A push needs a message saying why (-m).", param="message")
        name = source.spec.name
        for _ in range(_PUSH_ATTEMPTS):
            try:
                async with self.store.label_transaction() as txn:
                    existing = await txn.version_by_sha(name, source.sha256)
                    if existing is not None:
                        return PushResult(existing, False, source.warnings)
                    number = await txn.latest_version(name) + 1
                    previous = await txn.label(name, LATEST)
                    record = VersionRecord(
                        name=name, version=number, sha256=source.sha256, content=source.content,
                        signature=self._signer.sign(name, number, source.sha256), key_id=self._signer.key_id,
                        author=caller.author, message=message.strip(), ticket=ticket, created_at=txn.now,
                    )
                    await txn.add_version(record)
                    await txn.move(name, LATEST, from_version=previous, to_version=number, action="push",
                                   actor=caller.author, ticket=ticket)
                break
            except IntegrityError:
                continue  # another replica took this number (or pushed this content): look again
        else:
            raise ServiceUnavailable("Could not store the version under concurrent pushes; try again.")
        await self._audit.append(
            caller.actor, "prompt.push", f"prompt:{name}",
            before={"latest": previous} if previous else None,
            after={"version": number, "sha256": source.sha256, "author": caller.author, "message": record.message,
                   "key_id": record.key_id},
            ticket=ticket,
        )
        await self._on_change()
        return PushResult(record, True, source.warnings)

    async def set_label(
        self, name: str, label: str, version: int, caller: Caller, *,
        force: bool = False, reason: str | None = None, ticket: str | None = None,
    ) -> LabelResult:
        self._valid_label(label)

        async def choose(txn: LabelTransaction, current: int | None) -> tuple[int, int | None]:
            return version, None

        return await self._move(name, label, caller, "set", choose, force=force, reason=reason, ticket=ticket)

    async def promote(
        self, name: str, from_label: str, to_label: str, caller: Caller, *,
        force: bool = False, reason: str | None = None, ticket: str | None = None,
    ) -> LabelResult:
        """Point ``to_label`` at the version ``from_label`` points at now."""
        self._valid_label(to_label)

        async def choose(txn: LabelTransaction, current: int | None) -> tuple[int, int | None]:
            source = await txn.label(name, from_label)
            if source is None:
                raise NotFound(f"The prompt '{name}' has no label '{from_label}' to promote from.",
                               param="from_label", code="prompt_label_not_found")
            return source, None

        return await self._move(name, to_label, caller, "promote", choose, force=force, reason=reason, ticket=ticket,
                                extra={"from_label": from_label})

    async def rollback(
        self, name: str, label: str, caller: Caller, *, reason: str | None = None, ticket: str | None = None
    ) -> LabelResult:
        """Move ``label`` back to the version it held before its last move, in one step.

        Rolling back again keeps walking back through the label's history; a rollback itself
        is never "rolled back" (that would just toggle between two versions).
        """
        if label == LATEST:
            raise InvalidRequest("'latest' follows the newest version; roll back another label.", param="label")

        async def choose(txn: LabelTransaction, current: int | None) -> tuple[int, int | None]:
            move = await txn.rollback_target(name, label)
            if current is None or move is None or move.from_version is None:
                raise InvalidRequest(f"The label '{label}' of '{name}' has no earlier version to roll back to.",
                                     param="label", code="nothing_to_roll_back")
            return move.from_version, move.id

        return await self._move(name, label, caller, "rollback", choose, force=False, reason=reason, ticket=ticket)

    def _valid_label(self, label: str) -> None:
        problem = label_problem(label)
        if problem:
            raise InvalidRequest(f"Invalid label: {problem}.", param="label", code="invalid_label")

    async def _move(
        self,
        name: str,
        label: str,
        caller: Caller,
        action: str,
        choose: Callable[[LabelTransaction, int | None], Awaitable[tuple[int, int | None]]],
        *,
        force: bool,
        reason: str | None,
        ticket: str | None,
        extra: dict[str, Any] | None = None,
    ) -> LabelResult:
        protected = label in self._policy().protected_labels
        if protected:
            caller.require("approver", doing=f"Moving the protected label '{label}'")
        else:
            caller.require("author", "approver", doing="Moving a label")
        reason = reason.strip() if reason else None
        if force and not reason:
            raise InvalidRequest("A forced move needs a reason (--reason); it goes into the audit log.",
                                 param="reason", code="reason_required")
        async with self.store.label_transaction() as txn:
            if await txn.latest_version(name) == 0:
                raise NotFound(f"The prompt '{name}' does not exist.", param="name", code="prompt_not_found")
            current = await txn.label(name, label)
            target, reverts = await choose(txn, current)
            if not await txn.has_version(name, target):
                raise NotFound(f"The prompt '{name}' has no version v{target}.", param="version",
                               code="prompt_version_not_found")
            if target == current:
                return LabelResult(name, label, current, target, changed=False)
            forced, eval_id = False, None
            if protected and action != "rollback":
                evaluation = await txn.latest_eval(name, target)
                if evaluation is not None and evaluation.passed:
                    eval_id = evaluation.id
                elif force:
                    forced = True
                else:
                    raise PermissionDenied(_gate_message(name, label, target, evaluation), code="evaluation_required")
            await txn.move(name, label, from_version=current, to_version=target, action=action, actor=caller.author,
                           forced=forced, reason=reason, ticket=ticket, reverts=reverts)
        audit_action = "prompt.promote.forced" if forced else {
            "set": "prompt.label", "promote": "prompt.promote", "rollback": "prompt.rollback",
        }[action]
        await self._audit.append(
            caller.actor, audit_action, f"prompt:{name}@{label}",
            before={"version": current} if current is not None else None,
            after={"version": target, "via": action, "eval_id": eval_id, **(extra or {})},
            reason=reason, ticket=ticket,
        )
        await self._on_change()
        return LabelResult(name, label, current, target, changed=True, forced=forced, eval_id=eval_id)

    # -- reads -----------------------------------------------------------------------------

    async def list_prompts(self, caller: Caller) -> list[PromptSummary]:
        caller.require("author", "approver", doing="Reading prompts")
        return await self.store.summaries()

    async def version_of(self, ref: PromptRef) -> int:
        """The version a reference names; a bare name means ``latest`` here (authors look at
        what they just pushed), while callers of ``/v1`` get ``production``."""
        labels = await self.store.labels(ref.name)
        if not labels:
            raise NotFound(f"The prompt '{ref.name}' does not exist.", param="name", code="prompt_not_found")
        if ref.version is not None:
            if ref.version > labels.get(LATEST, 0):
                raise NotFound(f"The prompt '{ref.name}' has no version v{ref.version} "
                               f"(the latest is v{labels.get(LATEST, 0)}).", code="prompt_version_not_found")
            return ref.version
        label = ref.label or LATEST
        if label not in labels:
            raise NotFound(f"The prompt '{ref.name}' has no label '{label}'.", param="label",
                           code="prompt_label_not_found")
        return labels[label]

    async def _record(self, name: str, version: int) -> VersionRecord:
        record = await self.store.version(name, version)
        if record is None:
            raise NotFound(f"The prompt '{name}' has no version v{version}.", code="prompt_version_not_found")
        return record

    def _verified_spec(self, record: VersionRecord) -> PromptSpec:
        problem = integrity_problem(record, self._signer)
        if problem is not None:
            raise PromptIntegrityError(f"The prompt '{record.name}' v{record.version} failed its integrity check: "
                                       f"{problem}.")
        return spec_from_content(record.content)

    async def show(self, reference: str, caller: Caller) -> VersionView:
        caller.require("author", "approver", doing="Reading prompts")
        ref = _parse(reference)
        record = await self._record(ref.name, await self.version_of(ref))
        problem = integrity_problem(record, self._signer)
        spec = spec_from_content(record.content) if problem is None else None
        return VersionView(
            record=record, spec=spec, integrity=problem, labels=await self.store.labels(ref.name),
            latest_eval=await self.store.latest_eval(ref.name, record.version),
            source=render_source(spec) if spec is not None else record.content,
        )

    async def history(self, name: str, caller: Caller) -> History:
        caller.require("author", "approver", doing="Reading prompts")
        versions = await self.store.versions(name)
        if not versions:
            raise NotFound(f"The prompt '{name}' does not exist.", param="name", code="prompt_not_found")
        return History(name, versions, await self.store.moves(name), await self.store.labels(name))

    async def diff(self, name: str, a: str, b: str, caller: Caller) -> str:
        """A unified diff of two versions' rendered sources (``a``/``b``: ``3``, ``v3`` or a label)."""
        caller.require("author", "approver", doing="Reading prompts")
        texts = []
        for selector in (a, b):
            version = parse_version(selector)
            ref = PromptRef(name, None, version) if version is not None else _parse(f"{name}@{selector}")
            record = await self._record(name, await self.version_of(ref))
            texts.append((record.version, render_source(self._verified_spec(record))))
        (va, ta), (vb, tb) = texts
        lines = difflib.unified_diff(ta.splitlines(keepends=True), tb.splitlines(keepends=True),
                                     fromfile=f"{name}@v{va}", tofile=f"{name}@v{vb}")
        return "".join(lines)

    async def evaluations(self, name: str, version: int | None, caller: Caller) -> list[EvalRecord]:
        caller.require("author", "approver", doing="Reading prompts")
        return await self.store.evals(name, version)

    # -- evaluation ------------------------------------------------------------------------

    async def evaluate(self, reference: str, caller: Caller) -> EvalRecord:
        """Run the version's golden dataset through the gateway and record the result."""
        caller.require("author", "approver", doing="Evaluating a prompt")
        if self._runner is None:
            raise ServiceUnavailable("Evaluations need the gateway's request path, which is not running here.")
        ref = _parse(reference)
        record = await self._record(ref.name, await self.version_of(ref))
        spec = self._verified_spec(record)
        if not spec.golden:
            raise InvalidRequest(f"The prompt '{ref.name}' v{record.version} has no golden dataset to evaluate "
                                 "(add `dataset:` or `golden:` and push again).", code="no_golden_dataset")
        report = await self._runner.run(ref.name, record.version, spec)
        return await self.store.add_eval(
            name=ref.name, version=record.version, model=report.model, started_at=report.started_at,
            finished_at=report.finished_at, passed=report.passed, score=report.score, pass_rate=report.pass_rate,
            passed_cases=report.passed_cases, cost_usd=report.cost_usd, actor=caller.author, results=report.cases,
        )


def _parse(reference: str) -> PromptRef:
    try:
        return parse_reference(reference)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid prompt reference: {exc}.", param="name", code="invalid_reference") from None


def _gate_message(name: str, label: str, version: int, evaluation: EvalRecord | None) -> str:
    how = (f"Run `gateway prompts eval {name}@v{version}` (or POST /admin/prompts/{name}/versions/{version}/evals) "
           "until it passes, or force the move with a reason.")
    if evaluation is None:
        return f"The label '{label}' is protected and '{name}' v{version} has no evaluation. {how}"
    return (f"The label '{label}' is protected and the latest evaluation of '{name}' v{version} (#{evaluation.id}) "
            f"failed: {evaluation.passed_cases} of {evaluation.cases} cases passed. {how}")
