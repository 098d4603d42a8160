"""Servers under test as pinned subprocesses, and what ``/proc`` says about them.

Every server runs as its own process, pinned to one core with ``taskset`` so that a
measurement means "what one core of this machine does". CPU time and RSS are read from
``/proc/<pid>/stat`` and ``/proc/<pid>/status`` of the whole process tree (a server that
forks workers is charged for them), before and after each load phase.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the harness dies, however it dies, so no
    server outlives a killed benchmark run (PR_SET_PDEATHSIG survives the exec)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """``argv`` prefixed with ``taskset -c CORE`` (unchanged when unpinned or taskset is missing)."""
    if core is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, found by scanning ``/proc`` (cheap at phase boundaries)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants (utime + stime, fields 14-15)."""
    ticks = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            # After the split, index 0 is field 3 (state): utime is field 14, stime field 15.
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its descendants (``statm``'s resident pages)."""
    total = 0
    for member in process_tree(pid):
        try:
            resident = int(Path(f"/proc/{member}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident * PAGE_SIZE
    return total


def system_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot (``/proc/stat``), to spot foreign load."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(p) for p in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_idle(
    pids: Sequence[int], *, max_share: float = 0.05, window_s: float = 0.25, timeout_s: float = 60.0
) -> float:
    """Wait until ``pids`` together use less than ``max_share`` of a core over ``window_s``.

    A slow server is still working through requests a load generator abandoned when its phase
    ended (few servers cancel work when the client goes away); measuring the next phase on top
    of that backlog would charge it to the wrong phase. Returns the seconds waited.
    """
    started = time.perf_counter()
    while True:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(window_s)
        used = sum(cpu_seconds(pid) for pid in pids) - before
        waited = time.perf_counter() - started
        if used <= max_share * window_s or waited >= timeout_s:
            return waited


def http_status(url: str, timeout: float = 0.5) -> int | None:
    """GET ``url`` with a fresh connection; the status, or None when nothing answered."""
    return _request_status("GET", url, None, {}, timeout)


def http_post_status(url: str, body: bytes, headers: Mapping[str, str], timeout: float = 120.0) -> int | None:
    """POST ``body`` to ``url`` with a fresh connection; the status, or None on a network error."""
    return _request_status("POST", url, body, headers, timeout)


def http_get_text(url: str, timeout: float = 30.0) -> str:
    """GET ``url``'s body as text ("" on a network error or a status other than 200)."""
    with contextlib.suppress(OSError, http.client.HTTPException), urllib.request.urlopen(
        url, timeout=timeout
    ) as response:
        if response.status == 200:
            return str(response.read().decode())
    return ""


def _request_status(
    method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: float
) -> int | None:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Server:
    """One running server: its process, where it answers, and how long it took to be ready."""

    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    startup_s: float = 0.0
    startup_noise_pct: float = 0.0  # CPU other processes used while it started (see load.measure)
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful), then SIGKILL; only this process, which the harness started."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


class StartupFailed(RuntimeError):
    pass


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    base_url: str,
    ready_path: str,
    log_path: Path,
    core: int | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start ``argv`` pinned to ``core`` and wait until ``ready_path`` answers 200.

    The start-up time runs from just before the process is spawned to the first 200, so it
    includes the interpreter's start and every import, as an operator would see it.
    """
    log = log_path.open("ab")
    busy_before, own_before = system_busy_seconds(), time.process_time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        pinned(argv, core),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    log.close()
    server = Server(name=name, proc=proc, base_url=base_url, log_path=log_path)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise StartupFailed(f"{name} exited with {proc.returncode} during start-up:\n{server.log_tail()}")
        if http_status(base_url + ready_path, timeout=1.0) == 200:
            server.startup_s = time.perf_counter() - started
            foreign = system_busy_seconds() - busy_before - server.cpu_seconds() - (time.process_time() - own_before)
            server.startup_noise_pct = max(0.0, foreign) / (server.startup_s * (os.cpu_count() or 1)) * 100
            return server
        time.sleep(0.01)
    server.stop()
    raise StartupFailed(f"{name} was not ready within {timeout:.0f} s:\n{server.log_tail()}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
