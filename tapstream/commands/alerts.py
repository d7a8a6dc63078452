"""`tapstream alerts list|run`: open incidents from the alerts topic, and the alert runner alone."""

from __future__ import annotations

import asyncio
import signal

import typer

from monitor.alerting import AlertRunner, read_alerts
from monitor.alerts import alert_line, open_incidents
from tapstream.commands.common import emit_json, fail, settings_of
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

app = typer.Typer(help="Alerts: open incidents, and the runner that raises them (docs/alerts.md).",
                  no_args_is_help=True)


@app.command("list")
def list_open(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print one JSON array of the open alerts"),
) -> None:
    """Show the open incidents: alerts whose last event on the topic is a firing."""
    settings = settings_of(ctx)
    try:
        published = read_alerts(settings.kafka.bootstrap, settings.topics.alerts)
    except TapstreamError as exc:
        raise fail(exc) from exc
    incidents = open_incidents(published)
    if as_json:
        emit_json([alert.model_dump(mode="json") for alert in incidents])
    elif not incidents:
        typer.echo("no open incidents")
    else:
        typer.echo("\n".join(alert_line(alert) for alert in incidents))


@app.command("run")
def run(
    ctx: typer.Context,
    interval: float = typer.Option(
        None, "--interval", envvar="TAPSTREAM_ALERTS__INTERVAL_S", help="seconds between evaluations"
    ),
) -> None:
    """Evaluate the alert conditions until Ctrl-C, without the monitor (push devices are not watched)."""
    settings = settings_of(ctx)
    if interval is not None:
        settings.alerts.interval_s = interval
    asyncio.run(_run_until_signal(settings))


async def _run_until_signal(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await AlertRunner(settings).run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
