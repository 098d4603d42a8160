"""Remote mode: CLI commands acting through a gateway's admin API instead of its database.

With ``GATEWAY_URL`` and ``GATEWAY_KEY`` set (or ``--url`` and ``--key``), a command sends
its request to ``GATEWAY_URL/admin/...`` with the key as a bearer token, so it acts with that
key's roles (``author``, ``approver``, ``admin``) and the machine running it (a CI runner, a
laptop) never holds database credentials or the signing key. ``GATEWAY_KEY`` alone, without a
URL, leaves the CLI in local mode (a shell may hold an application's key in it).

Errors come back in OpenAI's shape (``{"error": {"message": ...}}``) and become the CLI's
usual ``error: ...`` lines, exit code 1. The key never appears in output or errors: it is
cut from every message this module prints.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer

from gateway.cli.common import fail

T = TypeVar("T")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="GATEWAY_URL", show_default=False,
                 help="Act through this gateway's admin API (remote mode) instead of the database."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="GATEWAY_KEY", show_default=False,
                 help="The API key remote mode acts with (its roles decide what is allowed)."),
]

# Reads and changes answer in milliseconds; an evaluation runs every golden case first.
_TIMEOUT_S = 30.0
_EVAL_TIMEOUT_S = 600.0


class RemoteError(Exception):
    """The gateway refused (an OpenAI-shaped error) or could not be reached."""

    def __init__(self, message: str, problems: list[str] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.status = status


def segment(value: str) -> str:
    """One URL path segment (a prompt name, a label, a reference such as ``name@v3``)."""
    return quote(value, safe="@")


class Remote:
    """A gateway's admin API, called with one key."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self._key = key

    def _clean(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                timeout: float = _TIMEOUT_S) -> Any:
        import httpx  # only remote mode needs it

        try:
            response = httpx.request(method, f"{self.url}{path}", json=json, params=params, timeout=timeout,
                                     headers={"Authorization": f"Bearer {self._key}"})
        except httpx.TimeoutException:
            raise RemoteError(f"The gateway at {self.url} did not answer within {timeout:.0f} s.") from None
        except httpx.HTTPError as exc:
            raise RemoteError(self._clean(f"Cannot reach the gateway at {self.url}: {exc}")) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            if response.status_code == 204:
                return None
            if body is None:
                raise RemoteError(f"The gateway at {self.url} answered {method} {path} with a body that is not JSON.")
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise RemoteError(f"The gateway at {self.url} answered {method} {path} with HTTP "
                              f"{response.status_code}.", status=response.status_code)
        problems = error.get("problems")
        return_problems = [self._clean(str(p)) for p in problems] if isinstance(problems, list) else None
        raise RemoteError(self._clean(error["message"]), return_problems, status=response.status_code)

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None, *, timeout: float = _TIMEOUT_S) -> Any:
        return self.request("POST", path, json=body, timeout=timeout)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def evaluation_timeout(self) -> float:
        return _EVAL_TIMEOUT_S


def remote(url: str | None, key: str | None) -> Remote | None:
    """The remote API for ``--url``/``--key`` (or the environment), or None for local mode."""
    if not url:
        return None
    if not key:
        fail("Remote mode (--url or GATEWAY_URL) needs an API key: --key or GATEWAY_KEY.")
    if not url.startswith(("http://", "https://")):
        fail(f"--url (GATEWAY_URL) must start with http:// or https://, not {url!r}.")
    assert key is not None
    return Remote(url, key)


def refuse_local_only(option: str, value: object) -> None:
    """Options that only mean something in local mode are refused remotely, not ignored."""
    if value:
        fail(f"{option} applies to local mode only; remote mode acts through the admin API with the key's roles.")


def call(work: Callable[[], T]) -> T:
    """Run a remote call; the gateway's refusal becomes the CLI's usual error line (exit 1)."""
    try:
        return work()
    except RemoteError as exc:
        if not exc.problems:
            fail(exc.message)
        for problem in exc.problems:  # one line each, as local mode lists them
            _error_line(problem)
        raise typer.Exit(1) from None


def _error_line(message: str) -> None:
    from rich.markup import escape

    from gateway.cli.common import err_console

    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def utc(value: datetime) -> datetime:
    """A stored time (SQLite hands back naive UTC) as the API writes it: with its offset."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_time(value: str) -> datetime:
    return utc(datetime.fromisoformat(value))
