"""`tapstream emulate zk`: many emulated ZKTeco pull terminals (port-4370 protocol) in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import typer

from emulator import config as emulator_config
from emulator import runner
from emulator.device import DeviceConfig
from emulator.fleet import Fleet
from producers import registry
from tapstream.commands.common import fail, settings_of
from tapstream.errors import ConfigError

app = typer.Typer(
    help="Emulated attendance terminals for testing a deployment without hardware.", no_args_is_help=True
)


@app.command("zk")
def zk(
    ctx: typer.Context,
    devices: int = typer.Option(1, "--devices", help="number of emulated devices (ignored with --config)"),
    base_port: int = typer.Option(4370, "--base-port", help="device i listens on TCP+UDP port P+i"),
    host: str = typer.Option("127.0.0.1", "--host", help="listen address of the devices and the control API"),
    serial_prefix: str = typer.Option("EMU", "--serial-prefix", help="serials are PREFIX0001, PREFIX0002, ..."),
    users: int = typer.Option(None, "--users", help="enrolled users per device (default 50)"),
    log_size: int = typer.Option(None, "--log-size", help="attendance records preloaded per device (default 0)"),
    capacity: int = typer.Option(
        None, "--capacity", help="attendance log capacity; the oldest record drops when full (default 100000)"
    ),
    rate: float = typer.Option(None, "--rate", help="automatic punches per second per device (default 0)"),
    timezone: str = typer.Option(None, "--timezone", help="IANA zone of the device clocks (default UTC)"),
    clock_offset: float = typer.Option(None, "--clock-offset", help="device clock minus true time in s (default 0)"),
    comm_key: int = typer.Option(None, "--comm-key", help="communication password the devices ask for (default 0)"),
    record_format: int = typer.Option(None, "--record-format", help="attendance record size 40, 16 or 8 (default 40)"),
    config_file: Path = typer.Option(
        None, "--config", help='JSON {"defaults": {...}, "devices": [{"serial": ...}]}; defines the devices'
    ),
    control_port: int = typer.Option(0, "--control-port", help="port of the HTTP control API (0: off)"),
    register: bool = typer.Option(
        False, "--register", help="add/update every device in the Postgres registry as a pull device"
    ),
) -> None:
    """Serve emulated pull terminals until Ctrl-C; pyzk and the pull producer talk to them as to real ones."""
    options = {
        k: v for k, v in dict(
            users=users, log_size=log_size, capacity=capacity, rate_per_s=rate, timezone=timezone,
            clock_offset_s=clock_offset, comm_key=comm_key, record_format=record_format,
        ).items() if v is not None
    }
    configs = _configs(devices, base_port, serial_prefix, config_file, options)
    if not 0 <= control_port <= 65535:
        raise ConfigError(f"--control-port {control_port} outside 0-65535")
    dsn = settings_of(ctx).postgres.effective_dsn() if register else None
    try:
        fleet = Fleet(configs, host=host)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    async def started(fleet: Fleet) -> None:
        for serial in fleet.devices:
            typer.echo(f"{serial}\t{fleet.host}:{fleet.port(serial)}")
        if dsn is not None:
            await asyncio.to_thread(_register, dsn, fleet)

    try:
        asyncio.run(runner.run(fleet, control_port=control_port, started=started))
    except OSError as exc:  # typically a port is taken
        raise fail(f"cannot listen on {host}: {exc}") from exc


def _configs(devices: int, base_port: int, prefix: str, config_file: Path | None,
             options: dict[str, Any]) -> Sequence[DeviceConfig]:
    try:
        if config_file is not None:
            return emulator_config.from_file(config_file, base_port=base_port, **options)
        return emulator_config.numbered(devices, base_port=base_port, prefix=prefix, **options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _register(dsn: str, fleet: Fleet) -> None:
    # devices listening on a wildcard address are reached through loopback from this host
    address = "127.0.0.1" if fleet.host in ("", "0.0.0.0", "::") else fleet.host
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            for serial, device in fleet.devices.items():
                cfg = device.config
                registry.add_device(
                    conn, serial=serial, kind="pull", timezone=cfg.timezone, name=cfg.device_name,
                    address=address, port=fleet.port(serial), comm_key=cfg.comm_key,
                )
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())  # psycopg's message spans lines; the error is one
        raise fail(f"cannot reach PostgreSQL to --register ({reason}); is `tapstream stack up` running?") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise fail("the devices table is missing; run `tapstream stack up` to apply migrations") from exc
    typer.echo(f"registered {len(fleet.devices)} pull devices at {address}")
