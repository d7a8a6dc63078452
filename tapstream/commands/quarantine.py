"""`tapstream quarantine list | replay`: the dead letters kept in Postgres, and re-sending them."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from infra.quarantine import CHUNK, COLUMNS, QuarantineError, QuarantineRow, ReplayReport, Selection, list_quarantine
from infra.quarantine import parse_id, parse_when, replay, row_dict
from tapstream.commands.common import ProgressBars, emit_json, settings_of

app = typer.Typer(
    help="What Tapstream could not accept: list it, replay it once the cause is fixed.", no_args_is_help=True
)


class OutputFormat(StrEnum):
    """How `list` prints its rows."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"


ReasonOpt = Annotated[str | None, typer.Option("--reason", help="reason code, e.g. unknown_device (docs/quarantine.md)")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="device serial")]
StageOpt = Annotated[str | None, typer.Option("--stage", help="push, pull or stream")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="quarantined at or after: ISO 8601 (no offset = UTC) or an age: 30m, 6h, 2d")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="quarantined before: ISO 8601 or an age")]
AllOpt = Annotated[bool, typer.Option("--all", help="include records already replayed")]


def _selection(
    reason: str | None, device: str | None, stage: str | None, since: str | None, until: str | None,
    include_replayed: bool, limit: int | None, ids: list[str] | None = None,
) -> Selection:
    return Selection(
        reason=reason, device=device, stage=stage,
        since=parse_when(since) if since else None, until=parse_when(until) if until else None,
        include_replayed=include_replayed, limit=limit, ids=tuple(parse_id(i) for i in ids or ()),
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    reason: ReasonOpt = None,
    device: DeviceOpt = None,
    stage: StageOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    include_replayed: AllOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="rows at most")] = 50,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="table, or every column: csv, json")] = OutputFormat.TABLE,
) -> None:
    """Show quarantined records, newest first (not yet replayed ones unless --all)."""
    selection = _selection(reason, device, stage, since, until, include_replayed, limit)
    rows = list_quarantine(settings_of(ctx).postgres.effective_dsn(), selection)
    if fmt is OutputFormat.JSON:
        emit_json([row_dict(row) for row in rows])
    elif fmt is OutputFormat.CSV:
        writer = csv.DictWriter(sys.stdout, fieldnames=["id", *COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(row_dict(row) for row in rows)
    else:
        _table(rows)


def _table(rows: list[QuarantineRow]) -> None:
    if not rows:
        typer.echo("no quarantined records match")
        return
    typer.echo(
        f"{'id':<12} {'when (UTC)':<19} {'reason':<17} {'stage':<6} {'device':<16} {'size':>7} {'replayed':<10} detail"
    )
    for row in rows:
        replayed = _utc(row.replayed_at)[:10] if row.replayed_at else "-"
        typer.echo(
            f"{row.id:<12} {_utc(row.quarantined_at):<19} {row.reason:<17} {row.stage:<6} "
            f"{row.device_serial or '-':<16} {row.original_size:>7} {replayed:<10} {_cut(row.detail, 70)}"
        )


@app.command("replay")
def replay_(
    ctx: typer.Context,
    reason: ReasonOpt = None,
    device: DeviceOpt = None,
    stage: StageOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    include_replayed: AllOpt = False,
    ids: Annotated[list[str] | None, typer.Option("--id", help="PARTITION:OFFSET as `list` shows it; repeatable")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="records at most (default: all)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be sent; send and mark nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as one JSON document")] = False,
) -> None:
    """Re-send selected records to the raw topic, oldest first; records still invalid are reported and kept."""
    selection = _selection(reason, device, stage, since, until, include_replayed, limit, ids)
    bars = ProgressBars()

    def progress(done: int, total: int) -> None:
        if total > CHUNK:  # a bar only when there is more than one chunk to wait for
            bars.update("replaying", done, total)

    try:
        report = replay(settings_of(ctx), selection, dry_run=dry_run, progress=progress)
    finally:
        bars.close()
    _print_report(report, dry_run, as_json)
    failed = report.count("failed")
    if failed:
        left = "; later records were not tried" if report.stopped else ""
        raise QuarantineError(f"{failed} record(s) not confirmed by Kafka stay un-replayed{left}: run the replay again")


def _print_report(report: ReplayReport, dry_run: bool, as_json: bool) -> None:
    if as_json:
        emit_json({"dry_run": dry_run, "stopped": report.stopped, "outcomes": [o.__dict__ for o in report.outcomes]})
        return
    for o in report.outcomes:
        typer.echo(f"{o.status:<10} {o.id:<12} {o.reason or '-':<17} {o.device_serial or '-':<16} {o.note}")
    sent = f"{report.count('would_send')} would be sent" if dry_run else f"{report.count('sent')} sent"
    typer.echo(
        f"replay{' (dry run: nothing sent or marked)' if dry_run else ''}: {sent}, "
        f"{report.count('skipped')} skipped, {report.count('failed')} failed"
    )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cut(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
