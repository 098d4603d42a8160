"""Operating rollouts: state transitions, compare-and-set, audit entries, roles and the gate."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog
from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, PromptsPolicy, TeamsFile
from gateway.config.rollouts import RolloutsFile
from gateway.errors import GatewayError
from gateway.prompts import Caller
from gateway.rollouts import RolloutBook
from gateway.rollouts.control import RolloutControl
from gateway.rollouts.feature import RolloutWatcher
from gateway.rollouts.state import RolloutState, RolloutStateStore, StateConflict
from gateway.storage import Database, open_database

STEPS = [{"weight": 10}, {"weight": 50}, {"weight": 100}]
ROLLOUTS = {
    "model-ro": {"target": {"alias": "chat", "canary": {"deployment": 1}}, "steps": STEPS},
    "manual-ro": {"target": {"alias": "chat", "canary": {"deployment": 1}}, "steps": STEPS, "start": "manual"},
    "beta-ro": {"target": {"prompt": "greet", "label": "beta", "canary": {"version": 2}}, "steps": STEPS},
    "prod-ro": {"target": {"prompt": "greet", "label": "production", "canary": {"version": 3}}, "steps": STEPS,
                "start": "manual"},
}


def catalog() -> Catalog:
    return build_catalog(PolicyBundle(
        models=ModelsFile.model_validate({"aliases": {"chat": {"deployments": [
            {"provider": "mock", "model": "a"}, {"provider": "mock", "model": "b", "weight": 0}]}}}),
        teams=TeamsFile.model_validate({"teams": {"t": {}}}),
        prompts=PromptsPolicy(),
        rollouts=RolloutsFile.model_validate({"rollouts": ROLLOUTS}),
    ))


class FakePrompts:
    def __init__(self) -> None:
        self.moves: list[tuple[str, str, int, bool, str | None]] = []
        self.alias_promotions: list[tuple[str, str]] = []

    async def set_label(self, name: str, label: str, version: int, caller: Caller, *, force: bool = False,
                        reason: str | None = None, ticket: str | None = None) -> None:
        self.moves.append((name, label, version, force, reason))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ro.db'}")
    yield database
    await database.close()


@contextlib.contextmanager
def refused(code: str) -> Iterator[None]:
    with pytest.raises(GatewayError) as caught:
        yield
    assert caught.value.code == code, caught.value.message


def control(db: Database, prompts: FakePrompts | None = None, passed: set[tuple[str, int]] | None = None
            ) -> RolloutControl:
    cat = catalog()
    found = prompts or FakePrompts()

    @contextlib.asynccontextmanager
    async def service() -> AsyncIterator[Any]:
        yield found

    async def eval_passed(name: str, version: int) -> bool:
        return (name, version) in (passed or set())

    async def promote_alias(rollout: Any, actor: Any, *, reason: str | None, ticket: str | None) -> int:
        found.alias_promotions.append((rollout.id, actor.key_id))
        return 7

    return RolloutControl(RolloutStateStore(db), AuditLog(db), lambda: cat, prompts=service,
                          eval_passed=eval_passed, promote_alias=promote_alias)


ADMIN = Caller.operator("ops")
APPROVER = Caller.of(Principal("key_appr", "t", frozenset({"approver"})))
AUTHOR = Caller.of(Principal("key_auth", "t", frozenset({"author"})))
APP = Caller.of(Principal("key_app", "t", frozenset({"app"})))


async def audit_actions(db: Database) -> list[tuple[str, str, Any, Any]]:
    return [(e.action, e.target, e.before, e.after) for e in await AuditLog(db).list(target="rollout:")]


async def test_states_move_and_every_change_is_audited(db: Database) -> None:
    ctl = control(db)
    views = {view.rollout.id: view for view in await ctl.views()}
    assert (views["model-ro"].state.status, views["model-ro"].weight) == ("running", 10)  # auto: implicit
    assert (views["manual-ro"].state.status, views["manual-ro"].weight) == ("pending", 0)

    started = await ctl.start("manual-ro", APPROVER, reason="go", ticket="OPS-1")
    assert (started.state.status, started.state.step, started.weight, started.state.revision) == ("running", 0, 10, 1)
    advanced = await ctl.advance("manual-ro", detail={"verdict": "pass"})
    assert (advanced.state.step, advanced.weight) == (1, 50)
    paused = await ctl.pause("manual-ro", AUTHOR)
    assert (paused.state.status, paused.weight) == ("paused", 50)
    with refused("rollout_state"):
        await ctl.advance("manual-ro")
    await ctl.resume("manual-ro", AUTHOR)
    aborted = await ctl.abort("manual-ro", APPROVER, reason="p95 regressed")
    assert (aborted.state.status, aborted.weight) == ("aborted", 0)
    for change in (ctl.pause("manual-ro", ADMIN), ctl.promote("manual-ro", ADMIN), ctl.advance("manual-ro")):
        with refused("rollout_state"):
            await change
    restarted = await ctl.start("manual-ro", ADMIN)
    assert (restarted.state.status, restarted.state.step) == ("running", 0)

    actions = await audit_actions(db)
    assert [a for a, *_ in actions] == ["rollout.start", "rollout.advance", "rollout.pause", "rollout.resume",
                                        "rollout.abort", "rollout.start"]
    assert {target for _, target, *_ in actions} == {"rollout:manual-ro"}
    assert actions[1][2]["weight"] == 10 and actions[1][3] == {
        "status": "running", "step": 1, "weight": 50, "revision": 2, "detail": {"verdict": "pass"}}
    entries = await AuditLog(db).list(target="rollout:manual-ro")
    assert entries[0].reason == "go" and entries[0].ticket == "OPS-1" and entries[0].actor_key_id == "key_appr"
    assert entries[1].actor_key_id == "rollout-controller"


async def test_a_replica_sees_a_change_through_its_watcher(db: Database) -> None:
    ctl = control(db)
    book = RolloutBook()
    watcher = RolloutWatcher(RolloutStateStore(db), book)
    await watcher.check()
    rollout = catalog().rollouts.by_id["model-ro"]
    assert book.weight(rollout) == 0.1
    await ctl.abort("model-ro", ADMIN)
    assert await watcher.check() is True and book.weight(rollout) is None
    assert await watcher.check() is False


async def test_two_changes_from_the_same_state_cannot_both_win(db: Database) -> None:
    store = RolloutStateStore(db)
    ctl = control(db)
    await ctl.start("manual-ro", ADMIN)
    stale = await store.get("manual-ro")
    assert stale is not None
    await ctl.advance("manual-ro")
    with refused("rollout_changed"):
        await ctl.advance("manual-ro", expected_revision=stale.revision)
    # The store itself refuses a write from a stale read (two controllers, one step).
    with pytest.raises(StateConflict):
        await store.put(stale, replace(stale, step=2))
    with pytest.raises(StateConflict):  # and a second first row
        await store.put(RolloutState("manual-ro", "running"), RolloutState("manual-ro", "running"))


async def test_roles_follow_the_target(db: Database) -> None:
    ctl = control(db)
    for change in (ctl.abort("model-ro", AUTHOR), ctl.start("prod-ro", AUTHOR), ctl.pause("model-ro", APP)):
        with refused("insufficient_role"):
            await change
    # A prompt rollout on an unprotected label is the author's business.
    assert (await ctl.pause("beta-ro", AUTHOR)).state.status == "paused"
    assert (await ctl.abort("beta-ro", AUTHOR)).state.status == "aborted"


async def test_a_protected_label_needs_a_passing_evaluation_of_the_canary(db: Database) -> None:
    with refused("evaluation_required"):
        await control(db).start("prod-ro", APPROVER)
    with refused("reason_required"):
        await control(db).start("prod-ro", APPROVER, force=True)
    forced = await control(db).start("prod-ro", APPROVER, force=True, reason="hotfix")
    assert forced.state.status == "running"
    assert [a for a, *_ in await audit_actions(db)] == ["rollout.start.forced"]
    await control(db).abort("prod-ro", APPROVER)
    assert (await control(db, passed={("greet", 3)}).start("prod-ro", APPROVER)).state.status == "running"


async def test_promoting_a_prompt_rollout_moves_its_label(db: Database) -> None:
    prompts = FakePrompts()
    ctl = control(db, prompts)
    promoted = await ctl.promote("beta-ro", AUTHOR, reason="healthy")
    assert (promoted.state.status, promoted.weight) == ("promoted", 100)
    assert prompts.moves == [("greet", "beta", 2, False, "healthy")]
    with refused("rollout_state"):
        await ctl.promote("beta-ro", AUTHOR)
    model = await ctl.promote("model-ro", ADMIN)
    assert model.weight == 100 and prompts.moves == [("greet", "beta", 2, False, "healthy")]
    # A model rollout's promotion rewrites the alias in the applied policies (see the promotion tests).
    assert prompts.alias_promotions == [("model-ro", "cli:ops")]
    promoted_entry = (await AuditLog(db).list(target="rollout:model-ro"))[-1]
    assert promoted_entry.action == "rollout.promote" and promoted_entry.after["detail"]["policy_version"] == 7
    # A promoted rollout routes nothing of its own: the label or the alias serves the canary.
    book = RolloutBook({"model-ro": model.state})
    assert book.weight(ctl.rollout("model-ro")) is None
    with refused("rollout_not_found"):
        await ctl.view("nope")
