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
    Column("rollout_id", String(100), nullable=True),  # added by migration 50 (rollouts)
    # request | cache_hit | rejected | error | cancelled | cut | shadow | reconciled (gateway.ledger.KINDS)
    Column("kind", String(20), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("saved_nanos", BigInteger, nullable=False, default=0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("error_code", String(100), nullable=True),
    # The request's trace in Langfuse (32 hex digits), when tracing is on (added by migration 60).
    Column("trace_id", String(32), nullable=True),
    # Added by migration 80 (data classes, fallbacks, downgrades): the request's data class, the
    # alias whose deployment answered (another than ``alias`` after a fallback across aliases)
    # and the alias asked for when a budget downgrade served ``alias`` instead.
    Column("data_class", String(50), nullable=True),
    Column("served_alias", String(200), nullable=True),
    Column("downgraded_from", String(200), nullable=True),
    Index("ix_ledger_team_ts", "team", "ts"),
)

# Browser sessions of the finance page (/reports) and its one-time login links. Only the
# sha256 of the cookie or link token is stored, with the hash of the API key it acts for, so
# the key's revocation (or the admin key's rotation) ends the session at its next use.
report_sessions = Table(
    "report_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("kind", String(10), nullable=False),  # session | link
    Column("key_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# Applied policy files, one row per `gateway policies apply`: the authoritative policies of
# every replica. Raw file text, ${ENV} placeholders included (secrets are never stored).
policy_snapshots = Table(
    "policy_snapshots",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("files", Text, nullable=False),  # JSON {filename: text}
    Column("digest", String(64), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
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

# The prompt repository (gateway.prompts). A version is immutable: its canonical content, the
# sha256 of that content and an Ed25519 signature over (name, version, sha256). The unique
# indexes make concurrent pushes from two replicas safe: one wins a number, the other retries,
# and identical content can only ever be one version.
prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content", Text, nullable=False),  # canonical JSON, exactly the bytes that were hashed
    Column("signature", String(200), nullable=False),
    Column("key_id", String(32), nullable=False),  # which signing key; lets keys rotate
    Column("author", String(200), nullable=False),
    Column("message", Text, nullable=False),
    Column("ticket", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("uq_prompt_versions_name_version", "name", "version", unique=True),
    Index("uq_prompt_versions_name_sha256", "name", "sha256", unique=True),
)

# Where each label points now (`latest` is moved by pushes).
prompt_labels = Table(
    "prompt_labels",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("label", String(100), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(200), nullable=False),
)

# Every label move, so a rollback can step back exactly one move; `reverts` points at the
# move a rollback undid, so rolling back twice walks further back instead of toggling.
prompt_label_history = Table(
    "prompt_label_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("label", String(100), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=False),
    Column("action", String(20), nullable=False),  # push | set | promote | rollback
    Column("forced", Boolean, nullable=False, default=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=True),
    Column("ticket", String(200), nullable=True),
    Column("reverts", BigInteger, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_prompt_label_history_name_label", "name", "label", "id"),
)

# Evaluation runs of a version's golden dataset; `results` holds the per-case JSON.
prompt_evals = Table(
    "prompt_evals",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("score", Float, nullable=False),
    Column("pass_rate", Float, nullable=False),
    Column("cases", Integer, nullable=False),
    Column("passed_cases", Integer, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("results", Text, nullable=False),
    Index("ix_prompt_evals_name_version", "name", "version", "id"),
)

# One row: a counter bumped in every transaction that moves a label. Replicas poll it (one
# indexed row) to notice moves without Redis; bumping it first also serialises label moves.
prompt_state = Table(
    "prompt_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
)

# Progressive rollouts (gateway.rollouts): one row per rollout id, its live state. The policy
# (steps, checks, match) lives in the applied policy snapshot; this is what moves: the step,
# the status and the check history. ``revision`` is bumped on every change so that replicas
# poll one number, and so that two controllers cannot both move a rollout (compare-and-set).
rollout_state = Table(
    "rollout_state",
    metadata,
    Column("rollout_id", String(100), primary_key=True),
    Column("status", String(20), nullable=False),  # pending | running | paused | promoted | aborted
    Column("step", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),  # failed checks in a row
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("step_started_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("revision", Integer, nullable=False, default=1),
    Column("history", Text, nullable=False, default="[]"),  # JSON list of check verdicts (newest last)
    # The controller lease generation of the analysis that last wrote the row (0: an operator).
    # A write by an older generation is refused: a controller that lost its lease while it was
    # deciding cannot move a rollout after its successor did (fencing).
    Column("fence", BigInteger, nullable=True, default=0),  # NULL (rows before migration 52): 0
)

# The rollout controller lease when there is no Redis (gateway.rollouts.lease): one row per
# lease name; whoever holds an unexpired row runs the analysis. ``generation`` grows by one
# with every new holder and is the fencing token of its writes.
rollout_lease = Table(
    "rollout_lease",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Hallucination scores of live answers (gateway.scoring.live), one row per scored request,
# joinable with the ledger on ``request_id``. The variant, rollout and prompt version are copied
# from the request so that a rollout's analysis reads one table (every replica writes it).
hallucination_scores = Table(
    "hallucination_scores",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("trace_id", String(32), nullable=True),
    Column("team", String(200), nullable=False),
    Column("alias", String(200), nullable=True),
    Column("prompt_name", String(200), nullable=True),
    Column("prompt_version", Integer, nullable=True),
    Column("variant", String(100), nullable=True),
    Column("rollout_id", String(100), nullable=True),
    Column("evaluator", String(50), nullable=False),
    Column("score", Float, nullable=False),  # [0, 1], 1 = unsupported
    Column("threshold", Float, nullable=False),  # the evaluator's: score > threshold = hallucinated
    Column("hallucinated", Boolean, nullable=False),
    Column("claims", Integer, nullable=False, default=0),
    Column("unsupported", Integer, nullable=False, default=0),
    Column("reasons", Text, nullable=False, default="[]"),  # JSON: the first unsupported claims' reasons
    Index("ix_hallucination_scores_rollout_ts", "rollout_id", "ts"),
)

# User feedback posted through POST /v1/feedback, on a request the poster's team made. The
# request's variant, rollout and prompt version are copied from its ledger row when posted.
feedback = Table(
    "feedback",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("trace_id", String(32), nullable=True),
    Column("team", String(200), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("metric", String(100), nullable=False),
    Column("value", Float, nullable=False),
    Column("comment", Text, nullable=True),
    Column("alias", String(200), nullable=True),
    Column("prompt_name", String(200), nullable=True),
    Column("prompt_version", Integer, nullable=True),
    Column("variant", String(100), nullable=True),
    Column("rollout_id", String(100), nullable=True),
    Index("ix_feedback_rollout_ts", "rollout_id", "ts"),
)

# Scores that Langfuse's own evaluators put on the traces of rollout requests, pulled back by
# trace id (gateway.scoring.pull). ``id`` is Langfuse's score id: a score pulled twice is stored
# once. ``ts`` is when it was pulled (a rollout's analysis window reads it, as it reads when
# feedback was posted); the request's variant, rollout and prompt version are copied from its
# ledger row.
langfuse_scores = Table(
    "langfuse_scores",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("scored_at", DateTime(timezone=True), nullable=True),  # Langfuse's timestamp of the score
    Column("trace_id", String(32), nullable=False, index=True),
    Column("request_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("value", Float, nullable=False),
    Column("source", String(20), nullable=False),  # Langfuse's: EVAL, ANNOTATION, API
    Column("team", String(200), nullable=False),
    Column("prompt_name", String(200), nullable=True),
    Column("prompt_version", Integer, nullable=True),
    Column("variant", String(100), nullable=True),
    Column("rollout_id", String(100), nullable=True),
    Index("ix_langfuse_scores_rollout_ts", "rollout_id", "ts"),
)

# Prompt versions mirrored into Langfuse prompt management (gateway.tracing.prompt_mirror):
# which Langfuse version each gateway version became. A row with no ``langfuse_version`` is a
# claim: the replica named in ``claimed_by`` is sending it (a stale claim is taken over).
langfuse_prompt_versions = Table(
    "langfuse_prompt_versions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),  # the gateway's
    Column("langfuse_version", Integer, nullable=True),
    Column("claimed_by", String(64), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("mirrored_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(300), nullable=True),
)

# Where each label was last set in Langfuse (``latest`` is Langfuse's own, never sent).
langfuse_prompt_labels = Table(
    "langfuse_prompt_labels",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("label", String(100), primary_key=True),
    Column("version", Integer, nullable=False),  # the gateway's
    Column("langfuse_version", Integer, nullable=False),
    Column("mirrored_at", DateTime(timezone=True), nullable=False),
)

# One row per shadow copy that ran (gateway.shadow): how its answer compared with the primary's.
# ``request_id`` is the primary's and ``shadow_request_id`` the copy's, both as in the ledger,
# so either side's ledger row joins on it. Comparison columns are NULL when the copy did not
# complete (``outcome`` error or timeout) or when they do not apply (no JSON asked, no tools).
shadow_comparisons = Table(
    "shadow_comparisons",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("rule", String(100), nullable=False),
    Column("request_id", String(64), nullable=False, index=True),
    Column("shadow_request_id", String(64), nullable=False),
    Column("team", String(200), nullable=False),
    Column("target", String(200), nullable=False),
    Column("primary_alias", String(200), nullable=True),
    Column("shadow_alias", String(200), nullable=True),
    Column("outcome", String(20), nullable=False),  # completed | error | timeout
    Column("primary_status", Integer, nullable=False),
    Column("shadow_status", Integer, nullable=False),
    Column("error_code", String(100), nullable=True),
    Column("exact_match", Boolean, nullable=True),
    Column("length_ratio", Float, nullable=True),
    Column("similarity", Float, nullable=True),
    Column("json_valid", Boolean, nullable=True),
    Column("schema_valid", Boolean, nullable=True),
    Column("tools_match", Boolean, nullable=True),
    Column("primary_latency_ms", Float, nullable=False, default=0.0),
    Column("shadow_latency_ms", Float, nullable=False, default=0.0),
    Column("primary_cost_nanos", BigInteger, nullable=False, default=0),
    Column("shadow_cost_nanos", BigInteger, nullable=False, default=0),
    Index("ix_shadow_comparisons_rule_ts", "rule", "ts"),
)
