"""Record what the gateway answers to the replayed requests: ``python -m tests.replay.record --out FILE``.

Run it from the root of the source tree to record, with that tree's Python. It uses the gateway
only the way an operator and a client do, so it runs unchanged against any version of the code:

1. a temporary folder gets its own ``gateway.yaml``, policy files and prompts (``config.py``);
2. the fake upstream starts (``python -m gateway fake-upstream``), keys are made and revoked with
   ``gateway keys``, prompts pushed and labelled with ``gateway prompts``;
3. ``python -m gateway serve`` starts, and the requests of ``requests.py`` are sent one by one
   with httpx; after each, the fake upstream's control API says what reached it;
4. the gateway is stopped with SIGTERM (which flushes the ledger), and the ``ledger`` table is
   read from the SQLite file.

The output is one JSON document: per request the status, headers, body (SSE as a list of events),
what the upstream received, and the request's ledger rows. Whatever legitimately changes from run
to run is normalised: timestamps, ports, generated keys and key ids, the temporary path, timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from tests.replay import config
from tests.replay.requests import REQUESTS, Replay

TREE: Final = Path(__file__).resolve().parents[2]
FORMAT: Final = 1
_START_TIMEOUT_S: Final = 60.0
_CLI_TIMEOUT_S: Final = 60.0
_REQUEST_TIMEOUT_S: Final = 30.0

#: Response headers dropped: set by the HTTP server from the clock or its own name.
_DROPPED_HEADERS: Final = frozenset({"date", "server"})
#: Ledger columns dropped: wall-clock time, run time, and the row's own id.
_DROPPED_COLUMNS: Final = frozenset({"id", "ts", "latency_ms", "trace_id"})
#: Ledger columns holding the request id, replaced by the request's name.
_REQUEST_ID_COLUMN: Final = "request_id"
#: Environment variables the shipped configuration reads; cleared so the run is hermetic.
_CLEARED_ENV_PREFIXES: Final = ("GATEWAY_", "OPENAI_", "DATABASE_URL", "REDIS_URL", "BUDGET_", "LANGFUSE_")

_ISO_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
_LOCAL_ADDRESS: Final = re.compile(r"(127\.0\.0\.1|localhost):\d+")
_GENERATED_REQUEST_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_VERSION: Final = re.compile(r"/\d+(?:\.\d+)*")
_KEY_ID: Final = re.compile(r"\bkey_[0-9a-f]{6,}\b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- normalisation ---------------------------------------------------------------------------------


@dataclass
class Normaliser:
    """Replaces what varies between runs with stable placeholders."""

    started: float
    replacements: list[tuple[str, str]] = field(default_factory=list)

    def add(self, value: str, placeholder: str) -> None:
        if value:
            self.replacements.append((value, placeholder))
            # Longest first, so a URL is replaced before the address inside it.
            self.replacements.sort(key=lambda pair: len(pair[0]), reverse=True)

    def text(self, value: str) -> str:
        for raw, placeholder in self.replacements:
            value = value.replace(raw, placeholder)
        value = _ISO_TIME.sub("<timestamp>", value)
        return _LOCAL_ADDRESS.sub(r"\1:<port>", value)

    def value(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        if (
            key == "created"
            and isinstance(value, int)
            and not isinstance(value, bool)
            and abs(value - self.started) < 2 * 86400
        ):
            return "<now>"
        return value


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Server-sent events as a list of ``{"data": <JSON or text>, "event": ..., ...}``."""
    text = text.replace("\r\n", "\n")
    events: list[dict[str, Any]] = []
    blocks = text.split("\n\n")
    tail = blocks.pop()  # after the last blank line: empty if the stream ended cleanly
    for block in blocks:
        event: dict[str, Any] = {}
        data: list[str] = []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                event.setdefault("comments", []).append(value)
            elif name == "data":
                data.append(value)
            else:
                event[name] = value
        if data:
            joined = "\n".join(data)
            try:
                event["data"] = json.loads(joined)
            except ValueError:
                event["data"] = joined
        events.append(event)
    if tail:
        events.append({"unterminated": tail})
    return events


def parse_body(content_type: str, raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    if content_type.startswith("text/event-stream"):
        return {"sse": parse_sse(text)}
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text}


def normalise_headers(
    raw: Sequence[tuple[str, str]], body: bytes, *, sent_request_id: bool, volatile: Sequence[str],
    norm: Normaliser,
) -> dict[str, str | list[str]]:
    """Headers by lowercased name (a list of values when one is repeated), in sorted order."""
    headers: dict[str, str | list[str]] = {}
    for name, value in raw:
        name = name.lower()
        if name in _DROPPED_HEADERS:
            continue
        if name in volatile:
            value = "<varies>"
        elif name == "x-gateway-overhead-ms" and re.fullmatch(r"\d+(\.\d+)?", value):
            value = "<ms>"  # a number of milliseconds; anything else is kept, and shows as a difference
        elif name == "content-length" and value == str(len(body)):
            value = "<length of body>"
        elif name == "x-request-id" and not sent_request_id and _GENERATED_REQUEST_ID.match(value):
            value = "<generated>"
        value = norm.text(value)
        previous = headers.get(name)
        if previous is None:
            headers[name] = value
        else:
            headers[name] = [*([previous] if isinstance(previous, str) else previous), value]
    return dict(sorted(headers.items()))


# -- processes -------------------------------------------------------------------------------------


def _environment(config_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TREE), env.get("PYTHONPATH", "")]))
    env["REPLAY_PROVIDER_KEY"] = config.PROVIDER_KEY
    env["REPLAY_ADMIN_KEY"] = config.ADMIN_KEY
    env["GATEWAY_CONFIG"] = str(config_path)
    env["PYTHONHASHSEED"] = "0"
    return env


@dataclass
class Run:
    root: Path
    python: str = sys.executable
    upstream_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    dead_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def dead(self) -> str:
        return f"http://127.0.0.1:{self.dead_port}"

    @property
    def config_path(self) -> Path:
        return self.root / "gateway.yaml"

    def write_files(self) -> None:
        def fill(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v) for v in value]
            if isinstance(value, str):
                return value.replace("{upstream}", self.upstream).replace("{dead}", self.dead)
            return value

        policies = self.root / "policies"
        policies.mkdir(parents=True)
        # JSON is YAML: no YAML writer needed, and nothing is left to a dumper's style choices.
        self.config_path.write_text(json.dumps(config.GATEWAY_YAML, indent=2) + "\n")
        (policies / "models.yaml").write_text(json.dumps(fill(config.MODELS_YAML), indent=2) + "\n")
        (policies / "teams.yaml").write_text(json.dumps(config.TEAMS_YAML, indent=2) + "\n")
        (policies / "prompts.yaml").write_text(json.dumps(config.PROMPTS_POLICY_YAML, indent=2) + "\n")
        shutil.copytree(config.PROMPTS_DIR, self.root / "prompts")

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [self.python, "-m", "gateway", *args], cwd=self.root, env=_environment(self.config_path),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def cli(self, *commands: Sequence[str]) -> list[str]:
        """Run ``gateway`` CLI commands at once (SQLite's busy timeout orders their writes); their stdouts."""
        env = _environment(self.config_path)
        running = [
            (args, subprocess.Popen(
                [self.python, "-m", "gateway", *args, "--config", str(self.config_path)], cwd=self.root, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
            for args in commands
        ]
        outputs: list[str] = []
        failures: list[str] = []
        for args, proc in running:
            try:
                stdout, stderr = proc.communicate(timeout=_CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"gateway {' '.join(args)} failed ({proc.returncode}):\n{stdout}{stderr}")
            outputs.append(stdout)
        if failures:
            raise RuntimeError("\n".join(failures))
        return outputs

    def wait_ready(self, proc: subprocess.Popen[bytes], name: str, url: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not become ready in {_START_TIMEOUT_S:.0f} s:\n{self.log(name)}")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            self.stop(proc, timeout=10.0)


# -- the recording ---------------------------------------------------------------------------------


def _set_up(run: Run, norm: Normaliser) -> dict[str, str]:
    """Keys and prompts through the CLI, a few commands at a time; returns the keys by label.

    The first command creates the database; the first push creates the prompt signing key.
    """
    labels = list(config.KEYS)
    create = [("keys", "create", "--team", config.KEYS[label], "--name", f"replay-{label}") for label in labels]
    push = [("prompts", "push", str(run.root / "prompts" / name), "-m", "replay", "--author", "replay")
            for name in config.PROMPTS]
    outputs = run.cli(create[0])
    outputs += run.cli(*create[1:], push[0])[: len(create) - 1]
    keys = {label: output.strip().splitlines()[-1].strip() for label, output in zip(labels, outputs, strict=True)}
    ids = {label: found.group(0) for label, output in zip(labels, outputs, strict=True)
           if (found := _KEY_ID.search(output.strip().splitlines()[0]))}
    if len(ids) != len(labels):  # the message changed: ask for the list instead
        listed = json.loads(run.cli(("keys", "list", "--all", "--format", "json"))[0])
        ids = {row["name"].removeprefix("replay-"): row["key_id"] for row in listed}
    for label in labels:
        norm.add(keys[label], f"<key:{label}>")
        norm.add(ids[label], f"<key_id:{label}>")
    run.cli(
        ("keys", "revoke", ids["revoked"]),
        *push[1:],
        *(("prompts", "label", "set", name, label, version) for name, label, version in config.LABELS),
    )
    return keys


def _send(client: httpx.Client, run: Run, item: Replay, keys: dict[str, str]) -> tuple[httpx.Response, bytes]:
    headers: dict[str, str] = {}
    if "authorization" in item:
        headers["authorization"] = item["authorization"]
    else:
        label = item.get("key", "demo")
        if label is not None:
            headers["authorization"] = f"Bearer {keys[label]}"
    if item.get("request_id", True):
        headers["x-request-id"] = item["name"]
    content: bytes | None = None
    if "raw" in item:
        content = item["raw"].encode()
    elif "json" in item:
        content = json.dumps(item["json"], separators=(",", ":")).encode()
    if content is not None:
        headers["content-type"] = "application/json"
    headers.update(item.get("headers", {}))
    request = client.build_request(
        item.get("method", "POST"), run.gateway + item.get("path", "/v1/chat/completions"),
        content=content, headers=headers,
    )
    response = client.send(request, stream=True)
    try:
        events = item.get("disconnect_after_events")
        if events is None:
            raw = response.read()
        else:  # hang up once that many events have arrived, keeping exactly those
            raw = b""
            for chunk in response.iter_raw():
                raw += chunk
                if raw.count(b"\n\n") >= events:
                    break
            raw = b"".join(part + b"\n\n" for part in raw.split(b"\n\n")[:events])
    finally:
        response.close()
    return response, raw


def _upstream_record(stats: dict[str, Any]) -> dict[str, Any] | None:
    if not stats["requests"] and not stats["pending_faults"]:
        return None
    record: dict[str, Any] = {"calls": stats["requests"], "by_path": stats["by_path"], "by_model": stats["by_model"]}
    last = stats.get("last_request")
    if last is not None:
        headers = dict(last["headers"])
        if "user-agent" in headers:
            headers["user-agent"] = _VERSION.sub("/<version>", headers["user-agent"])
        record["last_request"] = {**last, "headers": dict(sorted(headers.items()))}
    if stats["pending_faults"]:
        record["unused_faults"] = stats["pending_faults"]
    return record


def _ledger(database: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        cursor = db.execute("SELECT * FROM ledger ORDER BY id")
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


_last_phase = [time.monotonic()]


def _phase(name: str) -> None:
    """Say on stderr how long each phase took (the recording should stay well under 30 s)."""
    now = time.monotonic()
    print(f"  {name}: {now - _last_phase[0]:.1f} s", file=sys.stderr)
    _last_phase[0] = now


def record(root: Path) -> dict[str, Any]:
    _last_phase[0] = time.monotonic()
    norm = Normaliser(started=time.time())
    run = Run(root)
    norm.add(str(root), "<tmp>")
    norm.add(run.upstream, "<upstream>")
    norm.add(run.dead, "<dead>")
    norm.add(run.gateway, "<gateway>")
    norm.add(config.PROVIDER_KEY, "<provider-key>")
    norm.add(config.ADMIN_KEY, "<admin-key>")
    run.write_files()
    entries: list[dict[str, Any]] = []
    request_ids: dict[str, str] = {}
    volatile_ledger: dict[str, list[str]] = {}
    try:
        fake = run.spawn("fake-upstream", "fake-upstream", "--port", str(run.upstream_port),
                         "--require-key", config.PROVIDER_KEY)
        keys = _set_up(run, norm)  # while the fake upstream starts
        run.wait_ready(fake, "fake-upstream", f"{run.upstream}/_fake/health")
        _phase("set-up (keys, prompts, fake upstream)")
        gateway = run.spawn("gateway", "serve", "--config", str(run.config_path), "--port", str(run.gateway_port))
        run.wait_ready(gateway, "gateway", f"{run.gateway}/health/ready")
        _phase("gateway start")
        with httpx.Client(timeout=_REQUEST_TIMEOUT_S) as client:
            for item in REQUESTS:
                client.post(f"{run.upstream}/_fake/reset").raise_for_status()
                if "faults" in item:
                    client.post(f"{run.upstream}/_fake/faults", json=item["faults"]).raise_for_status()
                if "upstream_config" in item:
                    defaults = client.get(f"{run.upstream}/_fake/config").json()
                    client.post(f"{run.upstream}/_fake/config", json=item["upstream_config"]).raise_for_status()
                response, raw = _send(client, run, item, keys)
                stats = client.get(f"{run.upstream}/_fake/stats").json()
                if "upstream_config" in item:
                    client.post(f"{run.upstream}/_fake/config", json=defaults).raise_for_status()
                if "disconnect_after_events" in item:
                    time.sleep(0.3)  # let the gateway notice and cancel before the next request
                sent_id = item.get("request_id", True)
                if sent_id:
                    request_ids[item["name"]] = item["name"]
                echoed = response.headers.get("x-request-id")
                if echoed is not None:  # the one the gateway made up, when none was sent
                    request_ids[echoed] = item["name"]
                entries.append({
                    "name": item["name"],
                    "request": {"method": item.get("method", "POST"), "path": item.get("path", "/v1/chat/completions")},
                    "status": response.status_code,
                    "headers": normalise_headers(
                        response.headers.multi_items(), raw, sent_request_id=sent_id,
                        volatile=item.get("volatile_headers", []), norm=norm,
                    ),
                    "body": norm.value(parse_body(response.headers.get("content-type", ""), raw)),
                    "upstream": norm.value(_upstream_record(stats)),
                    "ledger": [],
                })
                volatile_ledger[item["name"]] = item.get("volatile_ledger", [])
        _phase(f"{len(REQUESTS)} requests")
        code = run.stop(gateway)
        if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the signal it stopped for
            raise RuntimeError(f"gateway exited with {code} on SIGTERM:\n{run.log('gateway')}")
    except BaseException:
        run.stop_all()
        for process in ("fake-upstream", "gateway"):
            print(f"--- {process} log (end) ---\n{run.log(process)}", file=sys.stderr)
        raise
    finally:
        run.stop_all()

    _phase("stop")
    by_name = {entry["name"]: entry for entry in entries}
    unmatched: list[dict[str, Any]] = []
    for row in _ledger(root / "gateway.db"):
        owner = request_ids.get(str(row.get(_REQUEST_ID_COLUMN)))
        clean = {k: v for k, v in row.items() if k not in _DROPPED_COLUMNS and k != _REQUEST_ID_COLUMN}
        clean = norm.value(clean)
        for column in volatile_ledger.get(owner or "", []):
            if column in clean:
                clean[column] = "<varies>"
        if owner is None:
            unmatched.append({"request_id": norm.text(str(row.get(_REQUEST_ID_COLUMN))), **clean})
        else:
            by_name[owner]["ledger"].append(clean)
    return {"format": FORMAT, "requests": entries, "unmatched_ledger_rows": unmatched}


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="gateway-replay-"))
    try:
        yield root
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.replay.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON recording")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs, database)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with _workdir(args.keep) as root:
        document = record(root)
    args.out.write_text(json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"recorded {len(document['requests'])} requests in {time.monotonic() - started:.1f} s to {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
