"""How each server in the comparison is configured and started.

* ``fake``: the fake OpenAI upstream (``python -m gateway.testing.fake_upstream``); "direct" is it.
* ``passthrough``: ``benchmarks/passthrough.py``, the bare-Python yardstick.
* ``gateway``: ``gateway serve`` with a temporary config (one alias pointing at the fake, a
  temporary SQLite database, no Redis, the access log as shipped) and a real team key.
* ``gateway-full`` (``--profile full``): the same with every stage on: key auth, a prompt
  (``prompt:bench@latest``, rendered per request), the response cache on Redis missing every
  time (each request is numbered, see ``UNIQUE_BODY``), a hard budget on Redis, a running
  rollout on the alias (a canary deployment at 50 %), and tracing at 100 % (content masked) to
  a local Langfuse receiver.
* ``litellm``: the LiteLLM proxy from its own virtual environment, pointed at the same fake
  with a master key, so both proxies authenticate every request.

Every server gets the same request body and answers with the fake's answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from benchmarks.procs import Server, start_server
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_LITELLM_VENV = BENCH_DIR / ".venv-litellm"
MODEL = "gpt-4o-mini"


def stage_catalog(team: str, team_spec: dict[str, object]) -> Catalog:
    """One alias ``bench`` (``gpt-4o-mini``, never called) and one team: what the in-process
    stage benchmarks run a single stage against, without a server or policy files."""
    deployment = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": MODEL}
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate({"aliases": {"bench": {"deployments": [deployment]}}}),
            teams=TeamsFile.model_validate({"teams": {team: team_spec}}),
        )
    )
UPSTREAM_KEY = "sk-bench-upstream"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"
CHAT_PATH = "/v1/chat/completions"

# A small, typical chat request: the fake echoes the last user message back.
REQUEST = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write one sentence about measuring a proxy's overhead."},
    ],
    "max_tokens": 64,
    "temperature": 0.2,
}


#: The full profile's request: a prompt with its variables; ``__N__`` is numbered per request
#: by the load generators, so no two requests are alike and the cache misses every time.
UNIQUE_BODY = {
    "model": "prompt:bench@latest",
    "messages": [],
    "variables": {"topic": "measuring a proxy's overhead", "request": "__N__"},
    "max_tokens": 64,
    "temperature": 0.2,
}

BENCH_PROMPT = {
    "name": "bench",
    "type": "chat",
    "description": "The full benchmark profile's prompt.",
    "model": MODEL,
    "variables": {"type": "object", "required": ["topic"],
                  "properties": {"topic": {"type": "string"}, "request": {"type": "string"}}},
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write one sentence about {{ topic }} (request {{ request }})."},
    ],
}


def write_bodies(directory: Path, *, unique: bool = False) -> tuple[Path, Path]:
    """The non-streaming and streaming request bodies, as files for the load generators
    (``unique``: the full profile's prompt request, numbered per request)."""
    request: dict[str, object] = UNIQUE_BODY if unique else REQUEST
    suffix = "-full" if unique else ""
    plain = directory / f"body{suffix}.json"
    stream = directory / f"body{suffix}-stream.json"
    plain.write_bytes(orjson.dumps(request))
    stream.write_bytes(orjson.dumps({**request, "stream": True}))
    return plain, stream


@dataclass(frozen=True)
class Endpoint:
    """Where a load generator sends chat completions, and with which key."""

    name: str
    url: str
    authorization: str | None = None


def _python() -> str:
    return sys.executable


def _gateway_command() -> list[str]:
    """The ``gateway`` console script next to this interpreter, else ``python -m gateway``."""
    script = Path(sys.executable).parent / "gateway"
    return [str(script)] if script.exists() else [_python(), "-m", "gateway"]


def start_fake(
    workdir: Path, *, port: int, core: int | None, name: str = "fake upstream", latency_ms: float = 0
) -> Server:
    """The project's fake upstream (``latency_ms``: before each answer); its log is
    ``fake.log``, or named after ``name`` when there are several."""
    argv = [_python(), "-m", "gateway.testing.fake_upstream", "--host", "127.0.0.1", "--port", str(port)]
    if latency_ms:
        argv += ["--latency-ms", str(latency_ms)]
    log_name = "fake" if name == "fake upstream" else name.replace(" ", "-")
    return start_server(
        name,
        argv,
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/health",
        log_path=workdir / f"{log_name}.log",
        core=core,
        timeout=30,
    )


def start_passthrough(workdir: Path, upstream: str, *, port: int, core: int | None) -> Server:
    return start_server(
        "passthrough",
        [_python(), "-m", "benchmarks.passthrough", "--upstream", upstream, "--port", str(port)],
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/_health",
        log_path=workdir / "passthrough.log",
        core=core,
        cwd=REPO,
        timeout=30,
    )


@dataclass(frozen=True)
class FullProfile:
    """What the full profile adds: Redis for the cache and the budget, a Langfuse receiver."""

    redis_url: str
    langfuse_url: str
    langfuse_public_key: str
    langfuse_secret_key: str
    team: str  # unique per run: budget counters and cache entries of earlier runs stay apart
    #: Features left out (``benchmarks.full_ablation``): any of ``FULL_FEATURES``.
    without: frozenset[str] = frozenset()


#: What ``FullProfile.without`` may leave out.
FULL_FEATURES = ("tracing", "cache", "budget", "rollout")


def write_gateway_config(root: Path, upstream: str, *, access_log: bool, full: FullProfile | None = None) -> Path:
    """A gateway config directory: one alias on the fake, one team, a fresh SQLite database
    (``full``: every stage on, see the module docstring)."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": 8080,
            "workers": 1,
            "access_log": access_log,
            "log_level": "info",
            "log_format": "json",
        },
        "storage": {"database_url": f"sqlite:///{root / 'gateway.db'}"},
        "redis": {"url": ""},
        "auth": {"admin_key": ""},
        "policies_dir": "policies",
        "prompts_dir": "prompts",
    }
    deployment = {
        "provider": "openai",
        "base_url": f"{upstream}/v1",
        "api_key": "${BENCH_UPSTREAM_KEY}",
        "model": MODEL,
        "timeout_s": 30,
        "retries": 0,
    }
    models: dict[str, object] = {"aliases": {MODEL: {"deployments": [deployment]}}}
    teams: dict[str, object] = {"teams": {"bench": {"models": ["*"], "prompts": ["*"]}}}
    if full is not None:
        config["redis"] = {"url": full.redis_url}
        if "tracing" not in full.without:
            config["tracing"] = {
                "host": full.langfuse_url, "public_key": full.langfuse_public_key,
                "secret_key": "${BENCH_LANGFUSE_SECRET}", "sample_rate": 1.0, "environment": "bench",
            }
        # The canary: the same fake, as the alias' second deployment (weight 0 outside the rollout).
        models = {"aliases": {MODEL: {"deployments": [deployment, {**deployment, "weight": 0}]}}}
        team: dict[str, object] = {
            "models": ["*"], "prompts": ["*"],
            "cache": {"enabled": True, "cache_nondeterministic": True, "ttl_s": 60},
            "budget": {"limit_usd": 1_000_000, "period": "daily", "hard": True},
            "tracing": {"content": "mask"},
        }
        for feature in ("cache", "budget"):
            if feature in full.without:
                del team[feature]
        teams = {"teams": {full.team: team}}
        rollouts: dict[str, object] = {"rollouts": {} if "rollout" in full.without else {"bench-canary": {
            "target": {"alias": MODEL, "canary": {"deployment": 1}},
            "steps": [{"weight": 50}, {"weight": 100}], "interval_s": 3600, "start": "auto",
        }}}
        (root / "policies" / "rollouts.yaml").write_text(yaml.safe_dump(rollouts, sort_keys=False))
        (root / "prompts" / "bench.yaml").write_text(yaml.safe_dump(BENCH_PROMPT, sort_keys=False))
    (root / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "policies" / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    (root / "policies" / "teams.yaml").write_text(yaml.safe_dump(teams, sort_keys=False))
    return root / "gateway.yaml"


def start_gateway(
    workdir: Path, upstream: str, *, port: int, core: int | None, access_log: bool = True,
    full: FullProfile | None = None, wrap: Sequence[str] = (), timeout: float = 60,
) -> tuple[Server, Endpoint]:
    """``gateway keys create`` (and, for the full profile, ``gateway prompts push``) then
    ``gateway serve``, as an operator would (``wrap``: a command ``gateway serve`` runs under,
    such as valgrind; ``timeout``: for it to become ready)."""
    name = "gateway-full" if full is not None else "gateway"
    root = workdir / name
    config = write_gateway_config(root, upstream, access_log=access_log, full=full)
    env = {**os.environ, "GATEWAY_CONFIG": str(config), "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    env.pop("GATEWAY_ADMIN_KEY", None)
    if full is not None:
        env["BENCH_LANGFUSE_SECRET"] = full.langfuse_secret_key
        pushed = subprocess.run(
            [*_gateway_command(), "prompts", "push", "prompts/bench.yaml", "-m", "benchmark prompt"],
            env=env, cwd=root, capture_output=True, text=True, timeout=120,
        )
        if pushed.returncode != 0:
            raise RuntimeError(f"gateway prompts push failed:\n{pushed.stdout}\n{pushed.stderr}")
    created = subprocess.run(
        [*_gateway_command(), "keys", "create", "--team", full.team if full else "bench", "--name", "benchmark"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if created.returncode != 0:
        raise RuntimeError(f"gateway keys create failed:\n{created.stdout}\n{created.stderr}")
    key = created.stdout.strip().splitlines()[-1]
    server = start_server(
        name,
        [*wrap, *_gateway_command(), "serve", "--config", str(config), "--port", str(port), "--workers", "1"],
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/health/ready",
        log_path=root / "gateway.log",
        core=core,
        env=env,
        cwd=root,
        timeout=timeout,
    )
    if full is None:
        server.notes.append(f"access log {'on' if access_log else 'off'}, SQLite, no Redis")
    else:
        server.notes.append(f"access log {'on' if access_log else 'off'}, SQLite, Redis: prompt, cache miss, "
                            "hard budget, rollout, tracing 100 % (masked)")
    return server, Endpoint(name, server.base_url + CHAT_PATH, f"Bearer {key}")


def find_litellm(venv: Path | None) -> Path | None:
    """The ``litellm`` proxy executable in ``venv`` (default ``benchmarks/.venv-litellm``), if installed."""
    candidate = (venv or DEFAULT_LITELLM_VENV) / "bin" / "litellm"
    if candidate.exists():
        return candidate
    return None


def start_litellm(
    workdir: Path, executable: Path, upstream: str, *, port: int, core: int | None
) -> tuple[Server, Endpoint]:
    """The LiteLLM proxy with defaults, one worker, one model on the fake, a master key, no database."""
    root = workdir / "litellm"
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{upstream}/v1", "api_key": UPSTREAM_KEY},
            }
        ],
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV")}
    # Offline machine: use the bundled price map instead of fetching it at start-up (which would
    # only add a network timeout to its start-up time), as an operator here would.
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PATH"] = f"{executable.parent}{os.pathsep}{env.get('PATH', '')}"
    server = start_server(
        "litellm",
        [str(executable), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/health/readiness",
        log_path=root / "litellm.log",
        core=core,
        env=env,
        cwd=root,
        timeout=180,
    )
    version = subprocess.run(
        [str(executable.parent / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    server.notes.append(f"litellm {version or '?'}, master key, no database")
    return server, Endpoint("litellm", server.base_url + CHAT_PATH, f"Bearer {LITELLM_MASTER_KEY}")


def wrk_path() -> str | None:
    return shutil.which("wrk")
