"""Every table the gateway stores, in one metadata object (migrations create them)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# API keys are stored only as sha256 hashes; `key_id` is a short public handle for listing
# and revoking, `prefix` the first characters shown to humans to recognise a key.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("team", String(200), nullable=False, index=True),
    Column("roles", Text, nullable=False),  # comma-separated
    Column("name", String(200), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

# The cost ledger: one row per request that reached the pipeline (answered, cached, rejected,
# failed, cancelled, shadow). Money is stored as integer nano-USD (1e-9) so that sums are
# exact and reconcile with Redis' integer counters to the cent.
ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("team", String(200), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("user", String(200), nullable=True),
    Column("alias", String(200), nullable=True),
    Column("deployment", String(300), nullable=True),
    Column("model", String(200), nullable=True),
    Column("prompt_name", String(200), nullable=True),
    Column("prompt_version", Integer, nullable=True),
    Column("variant", String(100), nullable=True),
    # request | cache_hit | rejected | error | cancelled | shadow
    Column("kind", String(20), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("saved_nanos", BigInteger, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("error_code", String(100), nullable=True),
    Index("ix_ledger_team_ts", "team", "ts"),
)

# The audit log: append-only, each entry carrying the hash of the one before it.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("actor_key_id", String(64), nullable=False),
    Column("actor_team", String(200), nullable=False),
    Column("action", String(100), nullable=False, index=True),
    Column("target", String(300), nullable=False, index=True),
    Column("before", Text, nullable=True),  # canonical JSON
    Column("after", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("ticket", String(200), nullable=True),
    # UNIQUE: two replicas appending at once cannot both extend the same entry; one retries.
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False, unique=True),
)
