"""`tapstream status`: the whole pipeline's health on one screen (exit 1 unless it is ok)."""

from __future__ import annotations

import typer

from infra.pipeline_probes import collect_status
from tapstream.commands.common import emit_json, settings_of


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print one JSON document instead of text"),
) -> None:
    """Show services, worker, lag, producers, spools and parked data; exit 1 when degraded or down."""
    current = collect_status(settings_of(ctx))
    if as_json:
        emit_json(current.to_dict())
    else:
        typer.echo(current.to_text())
    if current.verdict()[0] != "ok":
        raise typer.Exit(1)
