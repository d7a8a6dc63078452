"""`tapstream worker`: the stream worker (Faust) carrying raw punches into the sinks."""

from __future__ import annotations

import typer

from infra.worker import run_worker
from tapstream.commands.common import settings_of


def worker(
    ctx: typer.Context,
    exit_when_idle: float = typer.Option(
        None, "--exit-when-idle", help="stop after this many seconds without events (batch runs)"
    ),
) -> None:
    """Consume attendance.raw: dedup, enrich, quarantine, write PostgreSQL and ClickHouse."""
    run_worker(settings_of(ctx), exit_when_idle)
