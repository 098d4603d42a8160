"""Applied policies: the policy files every replica serves, versioned in storage.

``gateway policies apply`` validates the files under ``policies/``, shows their diff against
what is applied, records the new snapshot in the database and an audit entry. Once any
snapshot exists it is authoritative: every replica loads the latest snapshot (not its local
files, which may differ between machines) and polls for a newer one, so a change takes
effect everywhere within about a second, without a restart. Snapshots hold the raw file
text, ``${ENV}`` placeholders included: secrets are interpolated by each replica at load
time and never stored.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import desc, func, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.audit import Actor, AuditLog
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import load_policies
from gateway.config.settings import Settings
from gateway.config.yamlfile import ConfigError
from gateway.storage import Database
from gateway.storage.schema import policy_snapshots

log = logging.getLogger("gateway.policies")

POLICY_GLOB = "*.yaml"


@dataclass(frozen=True)
class Snapshot:
    version: int
    files: dict[str, str]
    applied_at: datetime
    actor: str

    @property
    def digest(self) -> str:
        return files_digest(self.files)


@dataclass(frozen=True)
class ApplyResult:
    version: int | None  # None: nothing changed
    diff: str
    catalog: Catalog


def files_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(orjson.dumps(files, option=orjson.OPT_SORT_KEYS)).hexdigest()


def read_policy_files(policies_dir: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(policies_dir.glob(POLICY_GLOB))}


def materialize(files: dict[str, str]) -> Path:
    """Write snapshot files to a private directory so the ordinary file loader (with its
    line-numbered errors and env interpolation) can read them."""
    directory = Path(tempfile.mkdtemp(prefix="gateway-policies-"))
    for name, text in files.items():
        (directory / Path(name).name).write_text(text, encoding="utf-8")
    return directory


def catalog_from_files(files: dict[str, str]) -> Catalog:
    directory = materialize(files)
    try:
        return build_catalog(load_policies(directory))
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


def diff_files(before: dict[str, str], after: dict[str, str]) -> str:
    chunks: list[str] = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, ""), after.get(name, "")
        if old == new:
            continue
        chunks.extend(
            difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"applied/{name}" if name in before else "/dev/null",
                tofile=f"policies/{name}" if name in after else "/dev/null",
            )
        )
    return "".join(chunks)


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._audit = AuditLog(db)

    async def latest(self) -> Snapshot | None:
        async with self._db.engine.connect() as conn:
            row = (
                (await conn.execute(select(policy_snapshots).order_by(desc(policy_snapshots.c.version)).limit(1)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        applied_at = row["applied_at"] if row["applied_at"].tzinfo else row["applied_at"].replace(tzinfo=UTC)
        return Snapshot(row["version"], orjson.loads(row["files"]), applied_at, row["actor"])

    async def latest_version(self) -> int:
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.max(policy_snapshots.c.version)))).scalar() or 0)

    async def apply(
        self,
        files: dict[str, str],
        actor: Actor,
        *,
        reason: str | None = None,
        ticket: str | None = None,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Validate ``files``; unless unchanged or ``dry_run``, store them as the next snapshot
        and audit the change. Raises ``ConfigError`` (nothing stored) when they do not validate."""
        catalog = catalog_from_files(files)
        current = await self.latest()
        before = current.files if current else {}
        diff = diff_files(before, files)
        if (current is not None and current.digest == files_digest(files)) or dry_run:
            return ApplyResult(None, diff, catalog)
        version = (current.version if current else 0) + 1
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(policy_snapshots).values(
                        version=version, files=orjson.dumps(files).decode(), digest=files_digest(files),
                        applied_at=datetime.now(UTC), actor=actor.key_id,
                    )
                )
        except IntegrityError:
            raise ConfigError(["another apply happened at the same time; run it again to see the new diff"]) from None
        await self._audit.append(
            actor, "policy.apply", "policies",
            before={"version": current.version if current else None,
                    "files": {name: _sha(text) for name, text in before.items()}},
            after={"version": version, "files": {name: _sha(text) for name, text in files.items()}, "diff": diff},
            reason=reason, ticket=ticket,
        )
        return ApplyResult(version, diff, catalog)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PolicyWatcher:
    """Polls storage for a newer snapshot and swaps the catalog in (every replica runs one)."""

    def __init__(self, store: PolicyStore, on_change: Callable[[Catalog, int], None], *,
                 interval_s: float = 0.5, version: int = 0) -> None:
        self._store = store
        self._on_change = on_change
        self._interval = interval_s
        self.version = version
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="policy-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check(self) -> bool:
        latest = await self._store.latest_version()
        if latest <= self.version:
            return False
        snapshot = await self._store.latest()
        if snapshot is None:
            return False
        try:
            catalog = catalog_from_files(snapshot.files)
        except ConfigError as exc:
            # Validated at apply time; this replica's environment must lack something (an env var).
            log.error("applied policies do not load here; keeping the current ones",
                      extra={"version": snapshot.version, "problems": exc.problems})
            self.version = snapshot.version
            return False
        self.version = snapshot.version
        self._on_change(catalog, snapshot.version)
        log.info("policies reloaded", extra={"version": snapshot.version})
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:
                log.exception("policy watcher failed; retrying")


@dataclass(frozen=True, slots=True)
class InForce:
    """The policies every replica serves, and where they came from."""

    catalog: Catalog
    version: int | None  # the applied snapshot's version; None: the files, never applied
    files_differ: bool = False  # the policy files were edited since the snapshot was applied


async def catalog_in_force(settings: Settings, db: Database) -> InForce:
    """The catalog every replica serves: the latest applied snapshot, else the policy files.

    The one place this rule is written: the server at start-up, and every CLI command that
    needs the catalog (keys, budgets, prompts), ask here.
    """
    policies_dir = settings.resolve_path(settings.policies_dir)
    snapshot = await PolicyStore(db).latest()
    if snapshot is None:
        return InForce(build_catalog(load_policies(policies_dir)), None)
    differ = policies_dir.is_dir() and read_policy_files(policies_dir) != snapshot.files
    return InForce(catalog_from_files(snapshot.files), snapshot.version, differ)
