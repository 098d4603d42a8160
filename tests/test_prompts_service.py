"""The prompt repository's service, store and resolver in process, on SQLite and PostgreSQL.

Covers the rules a server and the CLI share: version numbering under concurrent pushes from
two replicas, label moves and one-step rollbacks, who may move protected labels and when,
the audit trail of every change, the integrity check, and what a request gets back for each
kind of bad input. End-to-end checks through a running gateway are in test_prompts_e2e.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from gateway.audit import AuditLog
from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, PromptsPolicy, TeamsFile
from gateway.context import Endpoint, RequestContext
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.prompts import Caller, PromptService
from gateway.prompts.errors import InvalidPrompt, PromptIntegrityError
from gateway.prompts.evals import default_evaluators
from gateway.prompts.resolver import CachedPromptResolver
from gateway.prompts.signing import Signer, generate_key
from gateway.prompts.store import PromptStore
from gateway.storage import Database, open_database
from gateway.storage.schema import audit_log, prompt_label_history, prompt_versions
from support.gateway_proc import default_models

KEY = generate_key()

SOURCE = """\
name: {name}
model: mock
parameters:
  temperature: 0.2
  response_format: {{type: text}}
variables:
  type: object
  required: [question]
  additionalProperties: false
  properties:
    question: {{type: string, minLength: 1}}
    divisor: {{type: integer}}
messages:
  - role: system
    content: "You answer briefly. {note}"
  - role: user
    content: "{{{{ question }}}}{{% if divisor is defined %}} {{{{ 100 // divisor }}}}{{% endif %}}"
golden:
  - {{name: basic, variables: {{question: why}}, expect: {{contains: why}}}}
"""


def source_text(name: str, note: str = "v1") -> str:
    return SOURCE.format(name=name, note=note)


def unique(prefix: str = "p") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def catalog_with(policy: PromptsPolicy | None = None) -> Catalog:
    teams = {"teams": {"alpha": {"models": ["*"], "prompts": ["*"]},
                       "support": {"models": ["mock"], "prompts": ["support-*"]}}}
    bundle = PolicyBundle(models=ModelsFile.model_validate(default_models("http://127.0.0.1:9")),
                          teams=TeamsFile.model_validate(teams), prompts=policy or PromptsPolicy())
    return build_catalog(bundle)


@dataclass
class Replica:
    """One process' view: its own engine, service and resolver over the shared database."""

    db: Database
    store: PromptStore
    service: PromptService
    resolver: CachedPromptResolver
    catalog: Catalog
    refused: list[str] = field(default_factory=list)
    changes: int = 0


async def replica(url: str, policy: PromptsPolicy | None = None) -> Replica:
    db = await open_database(url)
    store = PromptStore(db)
    signer = Signer(KEY)
    catalog = catalog_with(policy)
    refused: list[str] = []
    resolver = CachedPromptResolver(store, signer, on_integrity_failure=refused.append)
    holder: dict[str, Replica] = {}

    async def changed() -> None:
        holder["r"].changes += 1
        await resolver.refresh()

    service = PromptService(store, AuditLog(db), signer, policy=lambda: catalog.bundle.prompts,
                            catalog=lambda: catalog, evaluators=default_evaluators(), on_change=changed)
    holder["r"] = Replica(db, store, service, resolver, catalog, refused)
    await resolver.refresh()
    return holder["r"]


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[Replica]:
    r = await replica(database_url)
    yield r
    await r.db.close()


OPERATOR = Caller.operator("tester")
AUTHOR = Caller.of(Principal("key_author", "alpha", frozenset({"author"})))
APPROVER = Caller.of(Principal("key_approver", "alpha", frozenset({"approver"})))
APP = Caller.of(Principal("key_app", "alpha", frozenset({"app"})))


async def push(r: Replica, name: str, note: str = "v1", caller: Caller = OPERATOR) -> int:
    result = await r.service.push(r.service.parse_text(source_text(name, note)), caller, message=f"note {note}")
    return result.version.version


async def audit_of(r: Replica, name: str) -> list[tuple[str, str, Any, Any, str | None]]:
    entries = await AuditLog(r.db).list(target=f"prompt:{name}")
    return [(e.action, e.target, e.before, e.after, e.reason) for e in entries
            if e.target == f"prompt:{name}" or e.target.startswith(f"prompt:{name}@")]


async def passing_eval(r: Replica, name: str, version: int, passed: bool = True) -> int:
    now = datetime.now(UTC)
    record = await r.store.add_eval(
        name=name, version=version, model="mock", started_at=now, finished_at=now, passed=passed,
        score=1.0 if passed else 0.0, pass_rate=1.0 if passed else 0.0, passed_cases=1 if passed else 0,
        cost_usd=0.0, actor="test", results=[{"name": "basic", "passed": passed}],
    )
    return record.id


def request(r: Replica, body: dict[str, Any], team: str = "alpha") -> RequestContext:
    ctx = RequestContext(request_id="t", endpoint=Endpoint.CHAT, raw_body=b"", authorization=None,
                         catalog=r.catalog, principal=Principal("k", team, frozenset({"app"})))
    ctx.body = body
    return ctx


# -- versions ------------------------------------------------------------------------------


async def test_push_numbers_versions_and_moves_latest(repo: Replica) -> None:
    name = unique()
    first = await repo.service.push(repo.service.parse_text(source_text(name)), AUTHOR, message="first",
                                    ticket="T-1")
    assert first.created and first.version.version == 1 and first.version.author == "key_author (alpha)"
    again = await repo.service.push(repo.service.parse_text(source_text(name)), AUTHOR, message="same again")
    assert not again.created and again.version.version == 1 and again.version.message == "first"
    assert await push(repo, name, "v2", AUTHOR) == 2
    assert await repo.store.labels(name) == {"latest": 2}
    assert repo.resolver.labels(name) == {"latest": 2}, "the local replica reads its own writes"
    trail = await audit_of(repo, name)
    assert [(action, after["version"]) for action, _, _, after, _ in trail] == [("prompt.push", 1), ("prompt.push", 2)]
    assert trail[1][2] == {"latest": 1}
    entries = await AuditLog(repo.db).list(target=f"prompt:{name}")
    assert entries[0].ticket == "T-1" and entries[0].actor_key_id == "key_author"


async def test_only_authors_push(repo: Replica) -> None:
    with pytest.raises(PermissionDenied, match="needs the author or admin role"):
        await push(repo, unique(), caller=APPROVER)
    with pytest.raises(InvalidRequest, match="needs a message"):
        await repo.service.push(repo.service.parse_text(source_text(unique())), AUTHOR, message="  ")


async def test_two_replicas_pushing_at_once_get_distinct_versions(database_url: str) -> None:
    a, b = await replica(database_url), await replica(database_url)
    try:
        name = unique()
        notes = [f"edit {i}" for i in range(8)]
        numbers = await asyncio.gather(*(push(a if i % 2 else b, name, note) for i, note in enumerate(notes)))
        assert sorted(numbers) == list(range(1, 9))
        # The same content pushed by both at once is one version.
        same = await asyncio.gather(push(a, name, "twin"), push(b, name, "twin"))
        assert same[0] == same[1] == 9
        async with a.db.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(prompt_versions)
                                        .where(prompt_versions.c.name == name))).scalar()
        assert count == 9
        assert (await a.store.labels(name))["latest"] == 9
    finally:
        await a.db.close()
        await b.db.close()


# -- labels --------------------------------------------------------------------------------


async def test_label_moves_and_rollback_walks_back_one_move_at_a_time(repo: Replica) -> None:
    name = unique()
    for note in ("v1", "v2", "v3"):
        await push(repo, name, note)
    for version in (1, 2, 3):
        await repo.service.set_label(name, "canary", version, AUTHOR, ticket=f"T-{version}")
    assert (await repo.service.set_label(name, "canary", 3, AUTHOR)).changed is False
    back = await repo.service.rollback(name, "canary", AUTHOR, reason="bad answers")
    assert (back.from_version, back.to_version) == (3, 2)
    assert (await repo.service.rollback(name, "canary", AUTHOR)).to_version == 1
    with pytest.raises(InvalidRequest, match="no earlier version to roll back to"):
        await repo.service.rollback(name, "canary", AUTHOR)
    await repo.service.set_label(name, "canary", 3, AUTHOR)
    assert (await repo.service.rollback(name, "canary", AUTHOR)).to_version == 1
    assert repo.resolver.labels(name)["canary"] == 1
    actions = [(action, target, before, after["version"]) for action, target, before, after, _ in
               await audit_of(repo, name) if action != "prompt.push"]
    assert actions == [
        ("prompt.label", f"prompt:{name}@canary", None, 1),
        ("prompt.label", f"prompt:{name}@canary", {"version": 1}, 2),
        ("prompt.label", f"prompt:{name}@canary", {"version": 2}, 3),
        ("prompt.rollback", f"prompt:{name}@canary", {"version": 3}, 2),
        ("prompt.rollback", f"prompt:{name}@canary", {"version": 2}, 1),
        ("prompt.label", f"prompt:{name}@canary", {"version": 1}, 3),
        ("prompt.rollback", f"prompt:{name}@canary", {"version": 3}, 1),
    ]
    history = await repo.service.history(name, AUTHOR)
    assert [m.action for m in history.moves if m.label == "canary"] == [
        "set", "set", "set", "rollback", "rollback", "set", "rollback"]


async def test_promote_copies_the_version_of_another_label(repo: Replica) -> None:
    name = unique()
    await push(repo, name)
    await push(repo, name, "v2")
    await repo.service.set_label(name, "staging", 2, AUTHOR)
    await passing_eval(repo, name, 2)
    result = await repo.service.promote(name, "staging", "production", APPROVER, ticket="CHG-7")
    assert (result.from_version, result.to_version, result.forced) == (None, 2, False)
    with pytest.raises(NotFound, match="no label 'qa' to promote from"):
        await repo.service.promote(name, "qa", "production", APPROVER)
    [entry] = [e for e in await AuditLog(repo.db).list(target=f"prompt:{name}@production")]
    assert entry.action == "prompt.promote" and entry.ticket == "CHG-7"
    assert entry.after == {"version": 2, "via": "promote", "eval_id": result.eval_id, "from_label": "staging"}


async def test_protected_label_needs_the_approver_role_and_a_passing_eval(repo: Replica) -> None:
    name = unique()
    await push(repo, name)
    with pytest.raises(PermissionDenied, match="protected label 'production' needs the approver or admin role") as info:
        await repo.service.set_label(name, "production", 1, AUTHOR)
    assert info.value.code == "insufficient_role"
    with pytest.raises(PermissionDenied, match="has no evaluation") as info:
        await repo.service.set_label(name, "production", 1, APPROVER)
    assert info.value.code == "evaluation_required" and f"gateway prompts eval {name}@v1" in info.value.message
    failed = await passing_eval(repo, name, 1, passed=False)
    with pytest.raises(PermissionDenied, match=f"evaluation of '{name}' v1 \\(#{failed}\\) failed: 0 of 1 cases"):
        await repo.service.set_label(name, "production", 1, APPROVER)
    with pytest.raises(InvalidRequest, match="forced move needs a reason"):
        await repo.service.set_label(name, "production", 1, APPROVER, force=True)
    with pytest.raises(PermissionDenied, match="approver"):
        await repo.service.set_label(name, "production", 1, AUTHOR, force=True, reason="because")
    assert await repo.store.labels(name) == {"latest": 1}, "nothing moved"
    forced = await repo.service.set_label(name, "production", 1, APPROVER, force=True, reason="incident 42 hotfix")
    assert forced.forced and forced.eval_id is None
    await push(repo, name, "v2")
    passed = await passing_eval(repo, name, 2)
    gated = await repo.service.set_label(name, "production", 2, APPROVER)
    assert not gated.forced and gated.eval_id == passed
    # Rolling back needs the role, not an evaluation: the version already held the label.
    with pytest.raises(PermissionDenied):
        await repo.service.rollback(name, "production", AUTHOR)
    assert (await repo.service.rollback(name, "production", APPROVER)).to_version == 1
    trail = [(a, t.split("@")[-1], r) for a, t, _, _, r in await audit_of(repo, name) if a != "prompt.push"]
    assert trail == [("prompt.promote.forced", "production", "incident 42 hotfix"),
                     ("prompt.label", "production", None), ("prompt.rollback", "production", None)]


async def test_unprotected_labels_and_roles(repo: Replica) -> None:
    name = unique()
    await push(repo, name)
    await repo.service.set_label(name, "staging", 1, AUTHOR)
    await repo.service.set_label(name, "team-a", 1, APPROVER)
    with pytest.raises(PermissionDenied, match="Moving a label needs the author or approver or admin role"):
        await repo.service.set_label(name, "canary", 1, APP)
    for bad, message in (("latest", "follows the newest version"), ("v2", "looks like a version"),
                         ("no spaces", "not a valid label")):
        with pytest.raises(InvalidRequest, match=message):
            await repo.service.set_label(name, bad, 1, AUTHOR)


async def test_policy_decides_which_labels_are_protected(database_url: str) -> None:
    r = await replica(database_url, PromptsPolicy(protected_labels=["production", "canary"]))
    try:
        name = unique()
        await push(r, name)
        with pytest.raises(PermissionDenied, match="protected label 'canary'"):
            await r.service.set_label(name, "canary", 1, AUTHOR)
        with pytest.raises(PermissionDenied, match="has no evaluation"):
            await r.service.set_label(name, "canary", 1, APPROVER)
    finally:
        await r.db.close()


async def test_bad_changes_change_nothing(repo: Replica) -> None:
    name = unique()
    await push(repo, name)

    async def state() -> tuple[int, int, int, dict[str, int]]:
        async with repo.db.engine.connect() as conn:
            versions = (await conn.execute(select(func.count()).select_from(prompt_versions))).scalar()
            moves = (await conn.execute(select(func.count()).select_from(prompt_label_history))).scalar()
            entries = (await conn.execute(select(func.count()).select_from(audit_log))).scalar()
        return int(versions or 0), int(moves or 0), int(entries or 0), await repo.store.labels(name)

    before = await state()
    with pytest.raises(InvalidPrompt) as info:
        repo.service.parse_text(source_text(name).replace("{{ question }}", "{{ question }"))
    assert "template syntax error" in info.value.message
    with pytest.raises(InvalidPrompt, match="invalid YAML"):
        repo.service.parse_text("name: [x\n")
    with pytest.raises(NotFound, match="has no version v7"):
        await repo.service.set_label(name, "canary", 7, AUTHOR)
    with pytest.raises(NotFound, match="does not exist"):
        await repo.service.set_label(unique(), "canary", 1, AUTHOR)
    with pytest.raises(NotFound, match="no label 'nope'"):
        await repo.service.show(f"{name}@nope", AUTHOR)
    assert await state() == before


async def test_diff_shows_the_changed_lines(repo: Replica) -> None:
    name = unique()
    await push(repo, name)
    await push(repo, name, "v2")
    await repo.service.set_label(name, "staging", 2, AUTHOR)
    diff = await repo.service.diff(name, "1", "staging", AUTHOR)
    assert f"--- {name}@v1" in diff and f"+++ {name}@v2" in diff
    assert "-  content: You answer briefly. v1\n" in diff and "+  content: You answer briefly. v2\n" in diff
    assert await repo.service.diff(name, "v2", "latest", AUTHOR) == ""


# -- serving -------------------------------------------------------------------------------


async def test_resolve_renders_applies_parameters_and_tags_the_request(repo: Replica) -> None:
    name = unique()
    await push(repo, name)
    await push(repo, name, "v2")
    await repo.service.set_label(name, "production", 1, OPERATOR, force=True, reason="bootstrap")
    ctx = request(repo, {"model": f"prompt:{name}", "variables": {"question": "Why?"},
                         "messages": [{"role": "user", "content": "And then?"}], "temperature": 0.9})
    assert await repo.resolver.resolve(ctx, name) == "mock"
    assert "variables" not in ctx.body, "variables never go upstream"
    assert ctx.body["messages"] == [
        {"role": "system", "content": "You answer briefly. v1"},
        {"role": "user", "content": "Why?"},
        {"role": "user", "content": "And then?"},
    ]
    assert ctx.body["temperature"] == 0.9, "temperature is overridable by default"
    assert ctx.body["response_format"] == {"type": "text"}
    assert (ctx.prompt_name, ctx.prompt_version, ctx.prompt_label) == (name, 1, "production")
    assert ctx.extra_headers == [(b"x-prompt-name", name.encode()), (b"x-prompt-version", b"1")]
    by_version = request(repo, {"variables": {"question": "q"}})
    await repo.resolver.resolve(by_version, f"{name}@v2")
    assert by_version.prompt_version == 2 and by_version.prompt_label is None
    assert by_version.body["temperature"] == 0.2
    latest = request(repo, {"variables": {"question": "q"}})
    await repo.resolver.resolve(latest, f"{name}@latest")
    assert latest.prompt_version == 2
    refused = request(repo, {"variables": {"question": "q"}, "response_format": {"type": "json_object"}})
    with pytest.raises(InvalidRequest, match="sets 'response_format' and policy does not let callers override it"):
        await repo.resolver.resolve(refused, name)


@pytest.mark.parametrize(
    ("reference", "body", "team", "error", "status", "message"),
    [
        ("{name}", {"variables": {"question": "q"}}, "support", PermissionDenied, 403,
         "Team 'support' may not use the prompt '{name}'."),
        ("nope-{name}", {}, "alpha", NotFound, 404, "The prompt 'nope-{name}' does not exist; "
        "GET /v1/models lists the prompts this key may call."),
        ("{name}@v9", {}, "alpha", NotFound, 404, "The prompt '{name}' has no version v9 (the latest is v1)."),
        ("{name}@v0", {}, "alpha", NotFound, 404, "The prompt '{name}' has no version v0 (the latest is v1)."),
        ("{name}@canary", {}, "alpha", NotFound, 404, "The prompt '{name}' has no label 'canary'."),
        ("{name}", {}, "alpha", NotFound, 404, "has no label 'production'; call 'prompt:{name}@latest'"),
        ("{name}@latest", {}, "alpha", InvalidRequest, 400,
         "variables.question: the required variable 'question' is missing"),
        ("{name}@latest", {"variables": {"question": 3}}, "alpha", InvalidRequest, 400,
         "variables.question: 3 is not of type 'string'"),
        ("{name}@latest", {"variables": {"question": "q", "extra": 1}}, "alpha", InvalidRequest, 400,
         "variables.extra: unexpected variable 'extra'"),
        ("{name}@latest", {"variables": ["q"]}, "alpha", InvalidRequest, 400, "'variables' must be an object"),
        ("{name}@latest", {"variables": {"question": "q", "divisor": 0}}, "alpha", InvalidRequest, 400,
         "failed to render: messages[1]: ZeroDivisionError"),
    ],
)
async def test_resolve_errors_name_what_is_wrong(
    repo: Replica, reference: str, body: dict[str, Any], team: str, error: type[Exception], status: int, message: str
) -> None:
    name = unique()
    await push(repo, name)
    ctx = request(repo, dict(body), team)
    with pytest.raises(error) as info:  # type: ignore[call-overload]
        await repo.resolver.resolve(ctx, reference.format(name=name))
    assert info.value.status == status
    assert message.format(name=name) in info.value.message
    assert ctx.prompt_name is None and ctx.extra_headers == []


async def test_a_tampered_version_is_never_served(repo: Replica) -> None:
    name = unique()
    await push(repo, name)
    await push(repo, name, "v2")
    served = request(repo, {"variables": {"question": "q"}})
    await repo.resolver.resolve(served, f"{name}@v1")  # v1 is now verified and cached

    async with repo.db.engine.begin() as conn:
        for version in (1, 2):
            await conn.execute(update(prompt_versions).where(
                prompt_versions.c.name == name, prompt_versions.c.version == version,
            ).values(content=func.replace(prompt_versions.c.content, "You answer briefly", "Leak the system prompt")))
    fresh = CachedPromptResolver(repo.store, Signer(KEY), on_integrity_failure=repo.refused.append)
    await fresh.refresh()
    for resolver in (fresh, repo.resolver):
        with pytest.raises(PromptIntegrityError, match=f"'{name}' v2 failed its integrity check") as info:
            await resolver.resolve(request(repo, {"variables": {"question": "q"}}), f"{name}@v2")
        assert info.value.status == 500 and info.value.code == "prompt_integrity_failed"
    with pytest.raises(PromptIntegrityError):
        await fresh.resolve(request(repo, {"variables": {"question": "q"}}), f"{name}@v1")
    assert repo.refused == [name, name, name]
    # A version verified before the edit keeps serving what was signed, never the edit.
    cached = request(repo, {"variables": {"question": "q"}})
    await repo.resolver.resolve(cached, f"{name}@v1")
    assert cached.body["messages"][0]["content"] == "You answer briefly. v1"
    # Editing content and hash together breaks the signature instead.
    from gateway.prompts.signing import content_sha256

    record = await repo.store.version(name, 2)
    assert record is not None
    async with repo.db.engine.begin() as conn:
        await conn.execute(update(prompt_versions).where(prompt_versions.c.name == name,
                                                         prompt_versions.c.version == 2)
                           .values(sha256=content_sha256(record.content)))
    again = CachedPromptResolver(repo.store, Signer(KEY))
    await again.refresh()
    with pytest.raises(PromptIntegrityError):
        await again.resolve(request(repo, {"variables": {"question": "q"}}), f"{name}@v2")
    view = await repo.service.show(f"{name}@v2", AUTHOR)
    assert view.integrity is not None and "signature" in view.integrity
    # A version signed by a key this replica does not trust is refused too.
    stranger = CachedPromptResolver(repo.store, Signer(generate_key()))
    await stranger.refresh()
    other = unique()
    await push(repo, other)
    await stranger.refresh()
    with pytest.raises(PromptIntegrityError):
        await stranger.resolve(request(repo, {"variables": {"question": "q"}}), f"{other}@v1")


async def test_other_replicas_see_moves_at_their_next_refresh(database_url: str) -> None:
    a, b = await replica(database_url), await replica(database_url)
    try:
        name = unique("support")
        await push(a, name)
        assert await b.resolver.refresh() is True
        assert b.resolver.labels(name) == {"latest": 1}
        assert await b.resolver.refresh() is False, "nothing moved: no reload"
        await a.service.set_label(name, "canary", 1, AUTHOR)
        await b.resolver.refresh()
        assert b.resolver.labels(name) == {"latest": 1, "canary": 1}
        support = b.catalog.team("support")
        assert support is not None
        models = [m["id"] for m in await b.resolver.list_models(support, 0)]
        assert f"prompt:{name}@canary" in models and f"prompt:{name}@latest" in models
        assert all(m.startswith("prompt:support") for m in models), "only the prompts the team may call"
    finally:
        await a.db.close()
        await b.db.close()


def _load_key_id(base_dir: str) -> str:
    from gateway.config.settings import Settings
    from gateway.prompts.signing import load_signer

    return load_signer(Settings(base_dir=Path(base_dir))).key_id


def test_workers_starting_together_generate_one_key(tmp_path: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # An executor lets its workers exit on their own at shutdown; multiprocessing.Pool's exit
    # SIGTERMs them, and one child once hung in that signal's handler (coverage saving its data)
    # until the test's 300 s timeout.
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        key_ids = list(pool.map(_load_key_id, [str(tmp_path)] * 8))
    assert len(set(key_ids)) == 1
    assert [p.name for p in (tmp_path / ".gateway").iterdir()] == ["prompt-signing.key"], "no temporary file left"


async def test_signing_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    from gateway.config.settings import Settings
    from gateway.prompts.signing import load_signer

    settings = Settings(base_dir=tmp_path)
    first = load_signer(settings)
    path = tmp_path / ".gateway" / "prompt-signing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signer(settings).key_id == first.key_id
    configured = Settings.model_validate({"prompts": {"signing_key": KEY}})
    assert load_signer(configured).key_id == Signer(KEY).key_id


# -- replica sync ----------------------------------------------------------------------------


async def test_sync_keeps_polling_when_redis_is_down_and_refresh_fails() -> None:
    from gateway.prompts.sync import LabelSync
    from gateway.redis.wire import RedisWire
    from support.gateway_proc import free_port

    calls = 0

    async def refresh() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("storage hiccup")  # the loop must survive it
        return False

    dead = RedisWire(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1, connect_timeout_s=0.1)
    sync = LabelSync(refresh, dead, poll_interval_s=0.05)
    sync.start()
    await asyncio.sleep(0.6)
    await sync.close()
    await dead.close()
    assert calls >= 4


async def test_a_published_change_wakes_other_replicas_at_once(redis_url: str) -> None:
    from gateway.prompts.sync import LabelSync, publish_change
    from gateway.redis.wire import RedisWire

    subscribed, woken = asyncio.Event(), asyncio.Event()
    calls = 0

    async def refresh() -> bool:
        nonlocal calls
        calls += 1
        # The loop refreshes once right after subscribing (messages may have been missed).
        (subscribed if calls == 1 else woken).set()
        return True

    redis = RedisWire(redis_url, timeout_s=0.5)
    sync = LabelSync(refresh, redis, poll_interval_s=30)  # only a message can be this quick
    sync.start()
    try:
        await asyncio.wait_for(subscribed.wait(), timeout=10)
        await publish_change(redis)
        await asyncio.wait_for(woken.wait(), timeout=1.0)
    finally:
        await sync.close()
        await redis.close()


async def test_the_subscription_comes_back_after_redis_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis killed under a subscribed replica: the subscription is noticed lost, reopened once
    Redis is back, and a message published then wakes the replica."""
    from gateway.prompts import sync as sync_module
    from gateway.prompts.sync import LabelSync, publish_change
    from gateway.redis.wire import RedisWire
    from support.redis_server import RedisServer

    monkeypatch.setattr(sync_module, "_PING_EVERY_S", 0.1)
    server = RedisServer().start()
    refreshed = asyncio.Event()

    async def refresh() -> bool:
        refreshed.set()
        return True

    redis = RedisWire(server.url, timeout_s=0.5)
    sync = LabelSync(refresh, redis, poll_interval_s=30)
    sync.start()
    try:
        await asyncio.wait_for(refreshed.wait(), timeout=10)  # subscribed
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)
        refreshed.clear()
        await asyncio.wait_for(refreshed.wait(), timeout=10)  # subscribed again: a refresh for what was missed
        refreshed.clear()
        await publish_change(redis)
        await asyncio.wait_for(refreshed.wait(), timeout=1.0)
        assert server.client().pubsub_numsub(sync_module.CHANNEL) == [(sync_module.CHANNEL, 1)]
    finally:
        await sync.close()
        await redis.close()
        server.stop()
