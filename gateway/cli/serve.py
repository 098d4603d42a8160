"""``gateway serve`` and ``gateway fake-upstream``."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import ConfigOption, fail_config, settings_or_exit
from gateway.config.policies import load_policies
from gateway.config.settings import config_path
from gateway.config.yamlfile import ConfigError
from gateway.redact import redact_url


def _check_bindable(host: str, port: int) -> None:
    """Exit at once, naming the address, when it cannot be listened on.

    uvicorn finds out only after the application started (storage, Redis, background tasks),
    then shuts all of it down again; a busy port once left the process hanging in that
    shutdown. Binding first (as uvicorn will, with SO_REUSEADDR) answers in a millisecond.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc} "
                       "(another gateway or program is using it; pick another with --port)", err=True)
            raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: ConfigOption = None,
        host: Annotated[str | None, typer.Option(help="Listen address (default from config).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default from config).")] = None,
        workers: Annotated[int | None, typer.Option(help="Worker processes (default from config).")] = None,
    ) -> None:
        """Run the gateway (uvicorn, uvloop, httptools)."""
        import uvicorn

        settings = settings_or_exit(config)
        try:
            # Fail here, with file and line, rather than inside a worker.
            from gateway.catalog import build_catalog

            build_catalog(load_policies(settings.resolve_path(settings.policies_dir)))
        except ConfigError as exc:
            fail_config(exc)
        if config:
            os.environ["GATEWAY_CONFIG"] = str(Path(config).resolve())
        listen_host, listen_port = host or settings.server.host, port or settings.server.port
        _check_bindable(listen_host, listen_port)
        worker_count = workers or settings.server.workers
        if worker_count > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Each worker has its own counters; multiprocess mode lets /metrics sum them.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
        found = config_path(config)
        config_file = str(found.resolve()) if found.exists() else "none, defaults"
        typer.echo(
            f"gateway: serving http://{listen_host}:{listen_port} (config: {config_file}; "
            f"database: {redact_url(settings.database_url)}; policies: {settings.resolve_path(settings.policies_dir)}; "
            f"{worker_count} worker{'s' if worker_count > 1 else ''})",
            err=True,
        )
        uvicorn.run(
            "gateway.server.app:create_app",
            factory=True,
            host=listen_host,
            port=listen_port,
            workers=worker_count,
            loop="uvloop",
            http="httptools",
            ws="none",  # no WebSocket endpoints: don't import a WebSocket stack at start-up
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=int(settings.server.graceful_timeout_s) or None,
            server_header=False,
            date_header=False,
        )

    @app.command("fake-upstream")
    def fake_upstream(
        host: str = "127.0.0.1",
        port: int = 9999,
        latency_ms: Annotated[float, typer.Option(help="Delay before each answer.")] = 0.0,
        stream_chunks: Annotated[int, typer.Option(help="Content chunks per streamed answer.")] = 8,
        chunk_delay_ms: Annotated[float, typer.Option(help="Delay between streamed chunks.")] = 0.0,
        require_key: Annotated[str | None, typer.Option(help="Only accept this bearer key.")] = None,
    ) -> None:
        """Run the fake OpenAI-compatible (and Anthropic) upstream used by tests and benchmarks."""
        from gateway.testing.fake_upstream import run

        run(
            host=host,
            port=port,
            latency_ms=latency_ms,
            stream_chunks=stream_chunks,
            chunk_delay_ms=chunk_delay_ms,
            require_key=require_key,
        )
