"""`tapstream report NAME`: analytics from ClickHouse (presence, arrivals, lateness, devices)."""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum

import typer

from infra.report_server import query_report
from infra.reports import REPORTS, render, resolve_window
from tapstream.commands.common import fail, settings_of


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def report(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="report to print; --list shows them", show_default=False),
    day_from: datetime | None = typer.Option(
        None, "--from", formats=["%Y-%m-%d"], help="first local (device) date (default: 6 days before today)"
    ),
    day_to: datetime | None = typer.Option(
        None, "--to", formats=["%Y-%m-%d"], help="local date after the last one, exclusive (default: tomorrow)"
    ),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", help="table, csv or json"),
    list_only: bool = typer.Option(False, "--list", help="list the reports and their columns, then exit"),
) -> None:
    """Print an analytics report over local days [--from, --to), each punch counted once.

    lateness: TAPSTREAM_ANALYTICS__WORK_START (09:00) + __GRACE_MINUTES (5). docs/analytics.md
    """
    if list_only:
        _print_list(fmt)
        return
    if name is None:
        raise fail("name a report: `tapstream report --list` shows them")
    settings = settings_of(ctx)
    window = resolve_window(
        day_from.date() if day_from else None, day_to.date() if day_to else None, today=date.today()
    )
    typer.echo(render(query_report(settings, name, window), fmt.value))


def _print_list(fmt: OutputFormat) -> None:
    if fmt is OutputFormat.JSON:
        typer.echo(json.dumps([
            {"name": r.name, "description": r.description, "columns": dict(r.columns)} for r in REPORTS.values()
        ]))
        return
    for r in REPORTS.values():
        typer.echo(f"{r.name:<17} {r.description}")
        typer.echo(f"{'':<17} columns: {', '.join(c for c, _ in r.columns)}")
