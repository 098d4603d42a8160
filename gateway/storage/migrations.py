"""Ordered, append-only schema migrations.

Each migration runs once, in its own transaction, and is recorded in ``schema_migrations``.
Never edit a released migration: append a new one. Replicas starting together serialise on
a lock (PostgreSQL advisory lock; SQLite's own write lock) so a migration runs exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Table, insert, inspect, select, text

from gateway.storage import schema


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def create_tables(*tables: Table) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return apply


def _seed_prompt_state(conn: Connection) -> None:
    """The prompt repository's single revision row (see ``schema.prompt_state``)."""
    conn.execute(insert(schema.prompt_state).values(id=1, revision=0))


def _rollouts(conn: Connection) -> None:
    """The rollout state table, and the ledger's ``rollout_id`` column (a ledger created by
    migration 20 from today's schema already has it)."""
    schema.rollout_state.create(conn, checkfirst=True)
    if "rollout_id" not in {column["name"] for column in inspect(conn).get_columns("ledger")}:
        conn.execute(text("ALTER TABLE ledger ADD COLUMN rollout_id VARCHAR(100)"))


def add_column(table: Table, name: str) -> Callable[[Connection], None]:
    """Add ``table``'s column ``name`` (as ``schema`` declares it) to a table created before it
    existed. A table created after the column was declared already has it: nothing to do."""

    def apply(conn: Connection) -> None:
        if name in {column["name"] for column in inspect(conn).get_columns(table.name)}:
            return
        column = table.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{name}" {kind}'))

    return apply


# Version ranges by feature keep concurrent work from colliding: core 1-9, prompts 10-19,
# ledger and budgets 20-29, audit 30-39, cache 40-49, rollouts 50-59, tracing 60-69, shadow 70-79,
# data classes and fallbacks 80-89, live scoring and feedback 90-99.
MIGRATIONS: list[Migration] = [
    Migration(1, "api keys", create_tables(schema.api_keys)),
    Migration(2, "applied policy snapshots", create_tables(schema.policy_snapshots)),
    Migration(
        10, "prompt repository",
        create_tables(schema.prompt_versions, schema.prompt_labels, schema.prompt_label_history,
                      schema.prompt_evals, schema.prompt_state),
    ),
    Migration(11, "prompt repository revision", _seed_prompt_state),
    Migration(20, "cost ledger", create_tables(schema.ledger)),
    Migration(29, "finance page sessions", create_tables(schema.report_sessions)),
    Migration(30, "audit log", create_tables(schema.audit_log)),
    Migration(50, "rollouts", _rollouts),
    Migration(51, "rollout controller lease", create_tables(schema.rollout_lease)),
    Migration(52, "rollout state fencing token", add_column(schema.rollout_state, "fence")),
    Migration(60, "trace ids on ledger rows", add_column(schema.ledger, "trace_id")),
    Migration(61, "prompt versions mirrored into Langfuse",
              create_tables(schema.langfuse_prompt_versions, schema.langfuse_prompt_labels)),
    Migration(70, "shadow comparisons", create_tables(schema.shadow_comparisons)),
    Migration(80, "data class on ledger rows", add_column(schema.ledger, "data_class")),
    Migration(81, "served alias on ledger rows", add_column(schema.ledger, "served_alias")),
    Migration(82, "downgraded alias on ledger rows", add_column(schema.ledger, "downgraded_from")),
    Migration(90, "hallucination scores of live answers", create_tables(schema.hallucination_scores)),
    Migration(91, "user feedback", create_tables(schema.feedback)),
    Migration(92, "scores pulled back from Langfuse", create_tables(schema.langfuse_scores)),
]

_ADVISORY_LOCK_ID = 727_001  # arbitrary, fixed: "gateway migrations"


def migrate(conn: Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    elif conn.dialect.name == "sqlite":
        # Python's sqlite3 opens a transaction only before the first INSERT, so the checks
        # below and the CREATE TABLEs ran unlocked: workers (and a CLI command) starting
        # together on a fresh file raced ("table already exists", duplicate versions) and the
        # loser failed start-up, which stops a multi-worker server. Take the write lock first;
        # the others wait on it (busy_timeout) and then find nothing left to do. (migrate is
        # the first statement of its transaction: see open_database.)
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    schema.schema_migrations.create(conn, checkfirst=True)
    done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
    applied = []
    for migration in sorted(MIGRATIONS, key=lambda m: m.version):
        if migration.version in done:
            continue
        migration.apply(conn)
        conn.execute(
            insert(schema.schema_migrations).values(
                version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
            )
        )
        applied.append(migration.version)
    return applied
