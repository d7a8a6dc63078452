"""`tapstream monitor`: the live monitor page, its SSE feed (/events), snapshot and metrics."""

from __future__ import annotations

import asyncio

import typer

from monitor.server import run_monitor
from tapstream.commands.common import fail, settings_of


def monitor(
    ctx: typer.Context,
    host: str = typer.Option(None, "--host", envvar="TAPSTREAM_MONITOR__HOST", help="listen address"),
    port: int = typer.Option(None, "--port", envvar="TAPSTREAM_MONITOR__PORT", help="listen port"),
) -> None:
    """Serve the live monitor: page at /, events at /events, /api/snapshot, /metrics (Ctrl-C stops)."""
    settings = settings_of(ctx)
    if host is not None:
        settings.monitor.host = host
    if port is not None:
        settings.monitor.port = port
    try:
        asyncio.run(run_monitor(settings))
    except OSError as exc:  # typically the port is taken or the address is not local
        raise fail(f"cannot listen on {settings.monitor.host}:{settings.monitor.port}: {exc}") from exc
