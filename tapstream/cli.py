"""The one `tapstream` command line. Commands are thin: parse options, call library code.

Settings are built once here (TAPSTREAM_* environment, `.env`) and handed to commands through
the Typer context; see tapstream/settings.py for every variable.
"""

from __future__ import annotations

import sys

import typer

from tapstream import logs
from tapstream.commands import (
    alerts, bench, demo, devices, emulate, employees, monitor, pull, push, quarantine, replay, report, schema, stack,
    status, worker,
)
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

app = typer.Typer(
    name="tapstream",
    help="Attendance-terminal data pipeline: devices -> Kafka -> Faust -> PostgreSQL + ClickHouse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(employees.app, name="employees")
app.add_typer(devices.app, name="devices")
app.add_typer(schema.app, name="schemas")
app.add_typer(bench.app, name="bench")
app.add_typer(emulate.app, name="emulate")
app.add_typer(quarantine.app, name="quarantine")
app.add_typer(alerts.app, name="alerts")
app.command("push")(push.push)
app.command("pull")(pull.pull)
app.command("backfill")(pull.backfill)
app.command("worker")(worker.worker)
app.command("demo")(demo.demo)
app.command("replay")(replay.replay)
app.command("checksums")(replay.checksums)
app.command("report")(report.report)
app.command("status")(status.status)
app.command("monitor")(monitor.monitor)


@app.callback()
def _root(
    ctx: typer.Context,
    log_level: str = typer.Option(None, "--log-level", envvar="TAPSTREAM_LOG_LEVEL", help="DEBUG, INFO, WARNING"),
) -> None:
    settings = Settings()
    if log_level:
        settings.log_level = log_level
    logs.configure(settings.log_level)
    ctx.obj = settings


def main() -> None:
    """Console-script entry point: a TapstreamError ends the command with one clear line, exit 1."""
    try:
        app()
    except TapstreamError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
