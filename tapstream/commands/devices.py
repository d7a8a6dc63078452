"""`tapstream devices ...`: the device registry in PostgreSQL (what producers trust)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import psycopg
import typer

from producers import registry
from tapstream.commands.common import emit_json, fail, settings_of

app = typer.Typer(help="Register, list, enable, disable and remove attendance devices.", no_args_is_help=True)


@contextmanager
def _connection(ctx: typer.Context) -> Iterator[psycopg.Connection[Any]]:
    dsn = settings_of(ctx).postgres.effective_dsn()
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise fail(f"cannot reach PostgreSQL ({exc}); is `tapstream stack up` running?") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise fail("the devices table is missing; run `tapstream stack up` to apply migrations") from exc


@app.command("add")
def add(
    ctx: typer.Context,
    serial: str = typer.Argument(..., help="serial number (SN) as the device reports it"),
    kind: str = typer.Option(..., "--kind", help="push (device calls us) or pull (we call it)"),
    timezone: str = typer.Option(..., "--timezone", help="IANA zone of the device clock, e.g. Asia/Dhaka"),
    name: str = typer.Option("", "--name", help="human-readable name"),
    site: str = typer.Option("", "--site", help="site or building"),
    address: str = typer.Option(None, "--address", help="IP or host name (pull devices)"),
    port: int = typer.Option(None, "--port", help="TCP port (pull devices, default 4370)"),
    comm_key: int = typer.Option(0, "--comm-key", help="communication password (pull devices)"),
    transport: str = typer.Option("tcp", "--transport", help="tcp or udp (pull devices; some models speak only UDP)"),
) -> None:
    """Register a device, or update it when the serial is already registered."""
    if kind not in ("push", "pull"):
        raise fail(f"--kind must be push or pull, not {kind!r}")
    if transport not in ("tcp", "udp"):
        raise fail(f"--transport must be tcp or udp, not {transport!r}")
    device_kind: registry.DeviceKind = "push" if kind == "push" else "pull"
    device_transport: registry.Transport = "udp" if transport == "udp" else "tcp"
    with _connection(ctx) as conn:
        created = registry.add_device(
            conn, serial=serial, kind=device_kind, timezone=timezone, name=name, site=site,
            address=address, port=port, comm_key=comm_key, transport=device_transport,
        )
    typer.echo(f"{'added' if created else 'updated'} {kind} device {serial} ({timezone})")


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="one JSON document")) -> None:
    """Show every registered device."""
    with _connection(ctx) as conn:
        rows = registry.list_devices(conn)
    if as_json:
        emit_json([asdict(row) for row in rows])
        return
    if not rows:
        typer.echo("no devices registered (tapstream devices add SERIAL --kind push --timezone Area/City)")
        return
    typer.echo(f"{'serial':<20} {'kind':<5} {'enabled':<7} {'address':<26} {'timezone':<22} {'site':<16} name")
    for row in rows:
        enabled = "true" if row.enabled else "false"
        typer.echo(
            f"{row.serial:<20} {row.kind:<5} {enabled:<7} {_address(row):<26} {row.timezone:<22} "
            f"{row.site:<16} {row.name}"
        )


def _address(row: registry.DeviceRow) -> str:
    if row.kind != "pull" or not row.address:
        return "-"
    return registry.pull_address(row.transport, row.address, row.port)


def _set_enabled(ctx: typer.Context, serial: str, enabled: bool) -> None:
    with _connection(ctx) as conn:
        found = registry.set_enabled(conn, serial, enabled)
    if not found:
        raise fail(f"device {serial} is not registered")
    typer.echo(f"{'enabled' if enabled else 'disabled'} device {serial}")


@app.command("enable")
def enable(ctx: typer.Context, serial: str = typer.Argument(...)) -> None:
    """Trust a device's punches again (pull devices: collected again within a minute)."""
    _set_enabled(ctx, serial, True)


@app.command("disable")
def disable(ctx: typer.Context, serial: str = typer.Argument(...)) -> None:
    """Stop trusting a device: pull devices are no longer collected, push uploads are quarantined."""
    _set_enabled(ctx, serial, False)


@app.command("remove")
def remove(ctx: typer.Context, serial: str = typer.Argument(...)) -> None:
    """Delete a device from the registry."""
    with _connection(ctx) as conn:
        found = registry.remove_device(conn, serial)
    if not found:
        raise fail(f"device {serial} is not registered")
    typer.echo(f"removed device {serial}")
