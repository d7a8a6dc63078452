"""`tapstream pull` and `tapstream backfill`: collect punches from pull devices (port 4370)."""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from types import FrameType

import psycopg
import typer

from producers.pull.backfill import backfill as run_backfill
from producers.pull.supervisor import run_pull
from producers.registry import DeviceInfo, postgres_loader
from schemas.punch import zone
from tapstream.commands.common import ProgressBars, fail, settings_of
from tapstream.settings import Settings


def pull(ctx: typer.Context) -> None:
    """Keep every enabled pull device collected: catch up, live capture, reconnect (Ctrl-C stops)."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    run_pull(settings_of(ctx), stop)


def backfill(
    ctx: typer.Context,
    device: str = typer.Option(..., "--device", help="serial of a registered pull device"),
    since: str = typer.Option(
        None, "--since", help="only records at or after this time: ISO 8601; without an offset it is the device's wall clock"
    ),
) -> None:
    """Read a pull device's log again and publish it (idempotent: duplicates are dropped downstream)."""
    settings = settings_of(ctx)
    info = _registered(settings, device)
    timezone = info.timezone or settings.devices.default_timezone
    cutoff = _device_time(since, timezone) if since else None
    bars = ProgressBars()
    try:
        result = run_backfill(settings, info, cutoff, progress=bars.update)
    finally:
        bars.close()
    typer.echo(
        f"backfilled {device}: {result.in_log} records in the log, {result.selected} selected, "
        f"{result.published} published to Kafka ({result.quarantined} quarantined) in {result.seconds:.1f} s"
    )


def _registered(settings: Settings, serial: str) -> DeviceInfo:
    try:
        devices = {d.serial: d for d in postgres_loader(settings.postgres.effective_dsn())()}
    except psycopg.Error as exc:
        raise fail(f"cannot read the device registry ({exc}); is `tapstream stack up` running?") from exc
    info = devices.get(serial)
    if info is None:
        raise fail(f"device {serial} is not registered (tapstream devices add {serial} --kind pull ...)")
    if info.kind != "pull" or not info.address:
        raise fail(f"device {serial} is a {info.kind} device without an address: only pull devices can be backfilled")
    if not info.enabled:
        raise fail(f"device {serial} is disabled in the registry; `tapstream devices enable {serial}` first")
    return info


def _device_time(text: str, timezone: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise fail(f"--since {text!r} is not an ISO 8601 time (e.g. 2026-11-01 or 2026-11-01T06:00)") from exc
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(zone(timezone)).replace(tzinfo=None)
