"""``gateway cache purge|stats`` — through the running server's admin API.

The embedded store lives inside the server process, so the CLI asks the server (``--url``,
default ``$GATEWAY_URL`` or the config's host and port; ``--key``, default ``$GATEWAY_KEY``
with a URL, else ``$GATEWAY_ADMIN_KEY`` or the config's admin key; with none, a one-off key of
the local operator, as ``gateway prompts`` acts). With a URL and a key no config is read: the
remote mode of the other commands. With Redis, ``purge --direct`` deletes the entries in Redis
itself, which works while no gateway is running.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import aiohttp
import orjson
import typer

from gateway.auth import KeyStore
from gateway.cache import PurgeFilter
from gateway.cache.base import CacheUnavailable
from gateway.cache.policy import scopes_of
from gateway.cache.redis_store import purge_keys
from gateway.catalog import Team
from gateway.cli.common import ConfigOption, console, fail, run, settings_or_exit, with_database
from gateway.config.policies import load_policies
from gateway.config.settings import Settings
from gateway.config.yamlfile import ConfigError
from gateway.redis.conn import connect_redis

app = typer.Typer(help="The response cache.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="GATEWAY_URL", show_default=False,
                 help="The gateway's base URL (default: host and port from the config)."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="GATEWAY_ADMIN_KEY", show_envvar=True,
                 help="An admin key (default: the config's; else a one-off local one)."),
]


@app.command()
def purge(
    team: Annotated[str | None, typer.Option(help="The team's entries (and its shared scope's).")] = None,
    alias: Annotated[str | None, typer.Option(help="Entries of this model alias.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Entries of this prompt.")] = None,
    prompt_version: Annotated[
        int | None, typer.Option("--prompt-version", min=1, help="Only this version of --prompt.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Purge every entry.")] = False,
    direct: Annotated[
        bool, typer.Option("--direct", help="Delete in Redis directly instead of asking the server.")
    ] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete cached answers by team, alias, prompt or prompt version (filters combine)."""
    if prompt_version is not None and prompt is None:
        fail("--prompt-version needs --prompt")
    if team is None and alias is None and prompt is None and not everything:
        fail("say what to purge: --team, --alias, --prompt [--prompt-version], or --all")
    if direct:
        purged = _purge_direct(settings_or_exit(config), team, alias, prompt, prompt_version)
        console.print(f"Purged {purged} entries from Redis.")
        return
    body = {"team": team, "alias": alias, "prompt": prompt, "prompt_version": prompt_version, "all": everything}
    result = _request(config, url, key, "POST", "/admin/cache/purge", body)
    scopes = f" (scopes {', '.join(result['scopes'])})" if result.get("scopes") else ""
    console.print(f"Purged {result['purged']} entries from the {result['backend']} cache{scopes}.", highlight=False)


@app.command()
def stats(url: UrlOption = None, key: KeyOption = None, config: ConfigOption = None) -> None:
    """The server process's cache state: backend, breaker, hits/misses/bypasses, size."""
    result = _request(config, url, key, "GET", "/admin/cache/stats", None)
    console.print_json(data=result)


def _request(config: str | None, url: str | None, key: str | None, method: str, path: str, body: Any) -> Any:
    # With a URL, the key is --key, else $GATEWAY_KEY (remote mode), else the admin key below.
    token = key or (os.environ.get("GATEWAY_KEY") if url else None)
    if url and token:
        from gateway.cli.remote import RemoteError, remote

        api = remote(url, token)
        assert api is not None
        try:
            return api.request(method, path, json=body, timeout=120)
        except RemoteError as exc:
            fail(f"{exc.status}: {exc.message}" if exc.status else exc.message)
    return _call(settings_or_exit(config), url, key, method, path, body)


def _base_url(settings: Settings, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere: reach it locally
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def _call(settings: Settings, url: str | None, key: str | None, method: str, path: str, body: Any) -> Any:
    token = key or settings.auth.admin_key.get_secret_value()
    if token:
        return _call_with(settings, url, token, method, path, body)
    # No admin key configured: act as the local operator, as `gateway prompts` does. Whoever
    # can run this here can write the gateway's database, so a short-lived admin key is made
    # there for this one call and revoked straight after (both in the audit log).
    created = with_database(settings, lambda db: KeyStore(db).create("admin", ("admin",), "gateway cache (local)"))
    try:
        return _call_with(settings, url, created.secret, method, path, body)
    finally:
        with_database(settings, lambda db: KeyStore(db).revoke(created.record.key_id, reason="one-off CLI key"))


def _call_with(settings: Settings, url: str | None, token: str, method: str, path: str, body: Any) -> Any:
    target = _base_url(settings, url) + path

    async def request() -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method,
            target,
            data=orjson.dumps(body) if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as response:
            return response.status, await response.read()

    try:
        status, raw = run(request)
    except aiohttp.ClientError as exc:
        fail(f"cannot reach the gateway at {target}: {exc}")
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = {}
    if status >= 400:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        fail(f"{status}: {error.get('message') or raw.decode(errors='replace')[:200]}")
    return data


def _purge_direct(
    settings: Settings, team: str | None, alias: str | None, prompt: str | None, version: int | None
) -> int:
    if not settings.redis.url:
        fail("--direct needs redis.url in the config (the embedded store lives in the server: drop --direct)")
    scopes = None
    if team is not None:
        try:
            teams = load_policies(settings.resolve_path(settings.policies_dir)).teams.teams
        except ConfigError as exc:
            fail("; ".join(exc.problems))
            return 0
        spec = teams.get(team)
        scopes = scopes_of(Team(team, spec) if spec is not None else None, team)
    selection = PurgeFilter(scopes, alias, prompt, version)
    # The request-path deadline is far too short for SCAN over a large keyspace.
    redis_settings = settings.redis.model_copy(update={"op_timeout_ms": 5000.0})

    async def do_purge() -> int:
        redis = connect_redis(redis_settings)
        assert redis is not None
        try:
            return await purge_keys(redis, selection)
        finally:
            await redis.close()

    try:
        return run(do_purge)
    except CacheUnavailable as exc:
        fail(str(exc))
        return 0
