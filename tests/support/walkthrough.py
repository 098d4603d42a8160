"""Run the docs' walkthroughs as written, so the docs cannot drift from the code.

A fenced block in a Markdown file belongs to a walkthrough when the line above it is
``<!-- walkthrough: NAME -->``; ``<!-- walkthrough: NAME background -->`` marks the command
that starts the gateway, which runs in the background. Blocks run in document order, in one
:class:`Terminal`: exported variables and the working directory carry over from one command
to the next, as in the reader's shell.

What a block shows as output is checked:

* in a ``bash`` block, ``# ...`` lines right under a command (no blank line between) are its
  output: each must appear in what it printed, ``…`` standing for anything. Output that starts
  with ``error:`` means the command must fail and print that on stderr. A ``# ...`` line after
  a blank line is only a comment;
* in a ``python`` block, ``print(...)  # TEXT`` means TEXT is printed.

Two things differ from a reader's machine, both explicit here: the gateway listens on a free
port instead of 8080 (``127.0.0.1:8080`` is rewritten in every command), and the install steps
in front of ``gateway serve`` are not repeated, because the virtualenv running the tests was
made by exactly those steps (``.venv`` in the project folder links to it).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.gateway_proc import REPO

MARKER = re.compile(r"^<!-- walkthrough: (?P<name>[\w-]+)(?P<background> background)? -->$")
# What the docs tell a reader to run before `gateway serve`; the tests' own virtualenv is the result.
INSTALL_STEPS = ("python3 -m venv .venv", ".venv/bin/pip install -e .")
DOCUMENTED_ADDRESS = "127.0.0.1:8080"


@dataclass(frozen=True)
class Block:
    """One marked fenced block."""

    language: str
    source: str
    background: bool
    where: str  # file:line, for failure messages


@dataclass(frozen=True)
class Command:
    """One shell command of a bash block and the output the docs show under it."""

    text: str
    shown: tuple[str, ...]

    @property
    def fails(self) -> bool:
        return bool(self.shown) and self.shown[0].startswith("error:")


def blocks(markdown: Path, name: str) -> list[Block]:
    """The blocks of walkthrough ``name`` in ``markdown``, in order."""
    lines = markdown.read_text().split("\n")
    found: list[Block] = []
    for index, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if not marker or marker["name"] != name:
            continue
        fence = lines[index + 1]
        assert fence.startswith("```"), f"{markdown.name}:{index + 1}: a walkthrough marker must precede a fence"
        end = lines.index("```", index + 2)
        found.append(
            Block(
                language=fence[3:].strip(),
                source="\n".join(lines[index + 2 : end]) + "\n",
                background=marker["background"] is not None,
                where=f"{markdown.name}:{index + 3}",
            )
        )
    return found


def commands(block: Block) -> list[Command]:
    """Split a bash block into commands (joining ``\\`` continuations) with their shown output."""
    parsed: list[Command] = []
    pending = ""
    output_may_follow = False
    for line in block.source.split("\n"):
        if pending:
            pending += "\n" + line
        elif line.startswith("#"):
            if output_may_follow:
                last = parsed[-1]
                parsed[-1] = Command(last.text, (*last.shown, line[2:] if line.startswith("# ") else line[1:]))
            continue
        elif not line.strip():
            output_may_follow = False
            continue
        else:
            pending = line
        if pending.endswith("\\"):
            continue
        parsed.append(Command(pending, ()))
        pending = ""
        output_may_follow = True
    return parsed


def printed(source: str) -> list[str]:
    """What a python block says its ``print(...)  # TEXT`` lines print."""
    return [match[1].strip() for match in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", source, re.MULTILINE)]


def shows(expected: str, output: str) -> bool:
    """Whether ``output`` contains the line the docs show, ``…`` matching anything."""
    pattern = ".*?".join(re.escape(piece) for piece in expected.strip().split("…"))
    return re.search(pattern, output) is not None


def project(root: Path) -> Path:
    """A new user's project folder after the quick start's install: the shipped ``gateway.yaml``,
    ``policies/`` and ``prompts/``, and ``.venv`` (the tests' own virtualenv)."""
    folder = root / "project"
    folder.mkdir()
    shutil.copy(REPO / "gateway.yaml", folder / "gateway.yaml")
    shutil.copytree(REPO / "policies", folder / "policies")
    shutil.copytree(REPO / "prompts", folder / "prompts")
    (folder / ".venv").symlink_to(Path(sys.prefix))
    return folder


class Terminal:
    """A reader's shell: one bash per command, sharing exported variables and the directory."""

    def __init__(self, folder: Path, port: int) -> None:
        self.port = port
        # `source .venv/bin/activate`, as the docs ask; nothing else of the test run's environment.
        self.env = {"PATH": f"{folder / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(folder.parent)}
        self.state = folder.parent / f".{folder.name}-terminal-env"
        self.cwd_file = folder.parent / f".{folder.name}-terminal-cwd"
        self.state.write_text("")
        self.cwd_file.write_text(str(folder))

    @property
    def cwd(self) -> Path:
        return Path(self.cwd_file.read_text().strip())

    def variable(self, name: str) -> str | None:
        """An exported variable of the shell, as the commands left it."""
        found = subprocess.run(
            ["bash", "-c", f'. {shlex.quote(str(self.state))}; printf %s "${{{name}-}}"'],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return found or None

    def _prelude(self) -> str:
        return f'set -a\n. {shlex.quote(str(self.state))}\ncd "$(cat {shlex.quote(str(self.cwd_file))})"\n'

    def _rewrite(self, text: str) -> str:
        return text.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{self.port}")

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run one command; its exports and ``cd`` stay for the next."""
        script = (
            self._prelude() + self._rewrite(command) + "\nstatus=$?\nset +a\n"
            f"export -p > {shlex.quote(str(self.state))}\npwd > {shlex.quote(str(self.cwd_file))}\n"
            "exit $status\n"
        )
        return subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=120)

    def python(self, source: str) -> subprocess.CompletedProcess[str]:
        """Run a python snippet with the shell's environment, in its directory."""
        script = self._prelude() + f"exec {shlex.quote(sys.executable)} -\n"
        return subprocess.run(
            ["bash", "-c", script],
            input=self._rewrite(source),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, command: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
        """Start a long-running command (``gateway serve``) with the shell's environment."""
        with log.open("wb") as sink:
            return subprocess.Popen(
                ["bash", "-c", self._prelude() + "exec " + self._rewrite(command)],
                env={**self.env, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )


def run_block(terminal: Terminal, block: Block) -> list[subprocess.CompletedProcess[str]]:
    """Run a (foreground) block and check the output it shows; returns each command's result."""
    assert not block.background, f"{block.where}: start background blocks with start_gateway"
    if block.language == "python":
        result = terminal.python(block.source)
        assert result.returncode == 0, f"{block.where}: the python block failed:\n{result.stderr}"
        for expected in printed(block.source):
            assert shows(expected, result.stdout), f"{block.where}: expected {expected!r} in:\n{result.stdout}"
        return [result]
    assert block.language in ("bash", "sh", "console"), f"{block.where}: cannot run a {block.language!r} block"
    results = []
    for command in commands(block):
        result = terminal.run(command.text)
        context = f"{block.where}: `{command.text}` exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        if command.fails:
            assert result.returncode != 0, f"the docs show this failing; {context}"
        else:
            assert result.returncode == 0, context
        for expected in command.shown:
            stream = result.stderr if command.fails else result.stdout
            assert shows(expected, stream), f"{block.where}: expected {expected!r}; {context}"
        results.append(result)
    return results


def start_gateway(terminal: Terminal, block: Block, log: Path) -> subprocess.Popen[bytes]:
    """Start the documented ``... && gateway serve`` on the terminal's port; wait until it is ready."""
    assert block.background and block.language == "bash", f"{block.where}: not a background bash block"
    *install, serve = [step.strip() for step in block.source.strip().split(" && ")]
    assert tuple(install) == INSTALL_STEPS, f"{block.where}: the install steps changed: {install}"
    proc = terminal.start(serve, log, GATEWAY_PORT=str(terminal.port))
    started = time.monotonic()
    while time.monotonic() - started < 60:
        if proc.poll() is not None:
            raise AssertionError(f"{block.where}: `{serve}` exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{terminal.port}/health/ready", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{block.where}: the gateway was not ready within 60 s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
