"""`tapstream replay` and `tapstream checksums`: rebuild the sinks from attendance.raw, and compare."""

from __future__ import annotations

import sys
from datetime import datetime
from enum import StrEnum
from typing import Any

import typer

from infra.checksums import table_checksums
from infra.replay import ReplayPlan, advance_group_offsets, parse_moment, prepare_replay, run_replay
from tapstream.commands.common import emit_json, settings_of


class SinkChoice(StrEnum):
    POSTGRES = "postgres"
    CLICKHOUSE = "clickhouse"
    ALL = "all"


def _moment(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = parse_moment(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{option} {text!r} is not `earliest` nor an ISO 8601 time "
                                 "(2026-11-01T06:00 is UTC; or give an offset)") from exc
    if option == "--to" and moment is None:
        raise typer.BadParameter("--to takes a time, not `earliest`")
    return moment


def replay(
    ctx: typer.Context,
    from_: str = typer.Option(..., "--from", help="`earliest`, or an ISO 8601 time (naive = UTC) of the messages"),
    to: str = typer.Option(None, "--to", help="stop before this time (default: the topic's end at start)"),
    sink: SinkChoice = typer.Option(SinkChoice.ALL, "--sink", help="the store(s) to rebuild; all = every configured"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Rebuild the sinks from attendance.raw with the current employee map (stop the worker first)."""
    settings = settings_of(ctx)
    start, end = _moment("--from", from_), _moment("--to", to)
    sinks = list(settings.worker.sinks) if sink is SinkChoice.ALL else [sink.value]
    plan = prepare_replay(settings, start, end, sinks)
    typer.echo(describe(plan), err=True)
    if not yes:
        typer.confirm("replay now?", abort=True, err=True)
    with typer.progressbar(length=max(plan.total, 1), label="replaying", show_pos=True, file=sys.stderr) as bar:
        summary = run_replay(settings, plan, progress=lambda done: bar.update(done - bar.pos))
    summary.moved = advance_group_offsets(settings, plan)
    if json_out:
        emit_json(summary.as_dict())
    else:
        typer.echo("\n".join(report(plan, summary.as_dict())))


def describe(plan: ReplayPlan) -> str:
    """What the replay is about to do, in two lines."""
    since = plan.start.isoformat() if plan.start else "the earliest offset"
    until = plan.end.isoformat() if plan.end else "the end as of now"
    offsets = ("then advance the worker group's offsets to the end where behind" if plan.complete
               else "the worker group's offsets will not be moved (not every sink, or not to the end)")
    codes = sum(record is not None for record in plan.employees.values())
    return (f"replay {plan.topic} from {since} to {until}: {plan.total} messages into {', '.join(plan.sinks)} "
            f"({codes} employee codes mapped);\n{offsets}")


def report(plan: ReplayPlan, summary: dict[str, Any]) -> list[str]:
    """The final summary (ReplaySummary.as_dict()), a few lines of text."""
    lines = [
        f"replayed {summary['messages']} messages in {summary['seconds']:.1f} s: {summary['written']} to write, "
        f"{summary['duplicates']} duplicates, {summary['unmatched']} unmatched, {summary['quarantined']} "
        "quarantined (already on their topics: not re-sent)",
    ]
    for name, sink in summary["sinks"].items():
        lines.append(f"  {name}: {sink['written']} written, {sink['inserted']} inserted, {sink['attempts']} attempts")
    if summary["rejected"]:
        lines.append(f"  {summary['rejected']} rows rejected by a sink (logged above; not sent to the dead-letter topic)")
    moved = ", ".join(f"[{m['partition']}] {'none' if m['old'] is None else m['old']} -> {m['new']}"
                      for m in summary["moved"])
    lines.append(f"moved {plan.group} offsets on {plan.topic}: {moved}" if moved
                 else f"{plan.group} offsets on {plan.topic} not moved")
    return lines


def checksums(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="print the checksums as JSON"),
) -> None:
    """Row count and order-independent checksum per sink table (compare a live run and a replay)."""
    sums = table_checksums(settings_of(ctx))
    if json_out:
        emit_json({s.name: {"rows": s.rows, "checksum": s.checksum} for s in sums})
        return
    for s in sums:
        typer.echo(f"{s.name:<30} {s.rows:>10} rows  {s.checksum}")
