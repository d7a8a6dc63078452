"""`tapstream push`: run the ADMS/iclock endpoint that push devices upload to."""

from __future__ import annotations

import asyncio

import typer

from producers.push_server import run_push
from tapstream.commands.common import fail, settings_of


def push(
    ctx: typer.Context,
    host: str = typer.Option(None, "--host", envvar="TAPSTREAM_PUSH__HOST", help="listen address"),
    port: int = typer.Option(None, "--port", envvar="TAPSTREAM_PUSH__PORT", help="listen port set on the devices"),
) -> None:
    """Receive device uploads, spool them durably and publish them to Kafka (Ctrl-C stops)."""
    settings = settings_of(ctx)
    if host is not None:
        settings.push.host = host
    if port is not None:
        settings.push.port = port
    try:
        asyncio.run(run_push(settings))
    except OSError as exc:  # typically the port is taken or the address is not local
        raise fail(f"cannot listen on {settings.push.host}:{settings.push.port}: {exc}") from exc
