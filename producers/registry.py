"""The device registry: which serials Tapstream trusts, and each device's zone and site.

Kept in PostgreSQL (table ``devices``, infra/migrations/postgres/0001_foundation.sql) and read by
the producers through ``Registry``: an in-memory snapshot refreshed in the background. The last
good snapshot is also written to a JSON file, so a producer restarted while PostgreSQL is down
still knows its devices instead of quarantining every punch as "unknown device".

The operator functions (``add_device`` ...) take an open psycopg connection; the CLI owns it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from schemas.punch import zone
from tapstream.errors import ConfigError

logger = logging.getLogger(__name__)

DeviceKind = Literal["push", "pull"]
Transport = Literal["tcp", "udp"]
DEFAULT_PULL_PORT = 4370
Loader = Callable[[], Iterable["DeviceInfo"]]

_SELECT = (
    "SELECT serial, name, kind, timezone, site, enabled, address, port, comm_key, transport FROM devices"
)


@dataclass(frozen=True)
class DeviceInfo:
    """What a producer needs to know about one device."""

    serial: str
    name: str
    kind: str
    timezone: str
    site: str
    enabled: bool
    # Pull devices only. Defaults keep snapshots written before these fields existed readable.
    address: str | None = None
    port: int | None = None
    comm_key: int = 0
    transport: str = "tcp"

    @property
    def pull_port(self) -> int:
        """The port Tapstream connects to (4370 unless the registry says otherwise)."""
        return self.port or DEFAULT_PULL_PORT

    @property
    def where(self) -> str:
        """Where a pull device is reached, as logs and statuses show it."""
        return pull_address(self.transport, self.address, self.port)


def pull_address(transport: str, address: str | None, port: int | None) -> str:
    """``tcp://10.0.4.21:4370``: one spelling for logs, statuses and `devices list`."""
    return f"{transport}://{address}:{port or DEFAULT_PULL_PORT}"


@dataclass(frozen=True)
class DeviceRow:
    """A full ``devices`` row, for `tapstream devices list`."""

    serial: str
    name: str
    kind: str
    address: str | None
    port: int | None
    comm_key: int
    timezone: str
    site: str
    enabled: bool
    transport: str


class Registry:
    """Serial -> DeviceInfo, refreshed from ``loader`` every ``refresh_s`` seconds.

    ``loader`` returns every device (a test passes a lambda; production uses
    ``postgres_loader``). When it fails, the last good snapshot stays in force. ``snapshot_path``
    (optional) is where that snapshot is kept between runs.
    """

    def __init__(self, loader: Loader, *, snapshot_path: Path | None = None, refresh_s: float = 60.0) -> None:
        self._loader = loader
        self._snapshot_path = snapshot_path
        self._refresh_s = refresh_s
        self._devices: Mapping[str, DeviceInfo] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = False  # the last refresh reached the source
        self.refreshed_at: float | None = None  # time of the last successful refresh
        self._tried = False

    def lookup(self, serial: str) -> DeviceInfo | None:
        """The device with this serial, or None if the registry does not know it."""
        return self._devices.get(serial)

    def __len__(self) -> int:
        return len(self._devices)

    def devices(self) -> Mapping[str, DeviceInfo]:
        """Every known device by serial (a snapshot: later refreshes swap in a new map)."""
        return self._devices

    def start(self) -> None:
        """Load the saved snapshot, refresh once now, then keep refreshing in a daemon thread."""
        self._devices = self._read_snapshot()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="device-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the refresh thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def refresh(self) -> bool:
        """Reload from the source; on failure keep the current snapshot. True on success."""
        try:
            devices = {info.serial: info for info in self._loader()}
        except Exception as exc:  # any driver/network error: keep serving the last snapshot
            if self.healthy or not self._tried:  # once per outage, not once per refresh
                logger.warning("device registry unreachable, keeping %d known devices: %s", len(self), exc)
            self.healthy, self._tried = False, True
            return False
        if not self.healthy or devices != self._devices:
            logger.info("device registry loaded: %d devices", len(devices))
        self._devices = devices  # one reference swap: readers see the old or the new map
        self.healthy, self._tried = True, True
        self.refreshed_at = time.time()
        self._write_snapshot(devices)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def _read_snapshot(self) -> dict[str, DeviceInfo]:
        path = self._snapshot_path
        if path is None or not path.exists():
            return {}
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            devices = {row["serial"]: DeviceInfo(**row) for row in rows}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("ignoring unreadable registry snapshot %s: %s", path, exc)
            return {}
        logger.info("registry snapshot %s: %d devices", path, len(devices))
        return devices

    def _write_snapshot(self, devices: Mapping[str, DeviceInfo]) -> None:
        path = self._snapshot_path
        if path is None:
            return
        rows = [asdict(info) for info in sorted(devices.values(), key=lambda d: d.serial)]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", encoding="utf-8") as out:
                json.dump(rows, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)  # atomic: a crash leaves the old snapshot or the new one
        except OSError as exc:
            logger.warning("cannot save registry snapshot %s: %s", path, exc)


def postgres_loader(dsn: str, *, connect_timeout_s: int = 5) -> Loader:
    """A loader reading the ``devices`` table (one short connection per refresh)."""

    def load() -> list[DeviceInfo]:
        with psycopg.connect(dsn, connect_timeout=connect_timeout_s) as conn:
            return [DeviceInfo(*row) for row in conn.execute(_SELECT)]

    return load


def add_device(
    conn: psycopg.Connection[Any],
    *,
    serial: str,
    kind: DeviceKind,
    timezone: str,
    name: str = "",
    site: str = "",
    address: str | None = None,
    port: int | None = None,
    comm_key: int = 0,
    transport: Transport = "tcp",
) -> bool:
    """Insert or update a device; True when it was new. Raises ConfigError on bad values."""
    _validate(serial, kind, timezone, address)
    if transport not in ("tcp", "udp"):
        raise ConfigError(f"transport {transport!r} must be tcp or udp")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"port {port} must be 1-65535")
    if not 0 <= comm_key <= 999_999_999:
        raise ConfigError(f"comm key {comm_key} must be 0-999999999 (the device's numeric password)")
    row = conn.execute(
        """
        INSERT INTO devices (serial, name, kind, address, port, comm_key, timezone, site, transport)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (serial) DO UPDATE SET
            name = EXCLUDED.name, kind = EXCLUDED.kind, address = EXCLUDED.address,
            port = EXCLUDED.port, comm_key = EXCLUDED.comm_key, timezone = EXCLUDED.timezone,
            site = EXCLUDED.site, transport = EXCLUDED.transport, updated_at = now()
        RETURNING (xmax = 0)
        """,
        (serial, name, kind, address, port, comm_key, timezone, site, transport),
    ).fetchone()
    conn.commit()
    return bool(row and row[0])


def _validate(serial: str, kind: str, timezone: str, address: str | None) -> None:
    if not serial.strip() or len(serial) > 64:
        raise ConfigError(f"serial {serial!r} must be 1-64 characters")
    if kind not in ("push", "pull"):
        raise ConfigError(f"kind {kind!r} must be push or pull")
    if kind == "pull" and not address:
        raise ConfigError("a pull device needs --address (Tapstream connects to it)")
    try:
        zone(timezone)
    except ValueError as exc:
        raise ConfigError(f"{exc} (use an IANA name such as Asia/Dhaka)") from exc


def list_devices(conn: psycopg.Connection[Any]) -> list[DeviceRow]:
    """Every registered device, by serial."""
    query = (
        "SELECT serial, name, kind, address, port, comm_key, timezone, site, enabled, transport "
        "FROM devices ORDER BY serial"
    )
    return [DeviceRow(*row) for row in conn.execute(query)]


def set_enabled(conn: psycopg.Connection[Any], serial: str, enabled: bool) -> bool:
    """Enable or disable a device; False when the serial is not registered."""
    cur = conn.execute(
        "UPDATE devices SET enabled = %s, updated_at = now() WHERE serial = %s", (enabled, serial)
    )
    conn.commit()
    return cur.rowcount > 0


def remove_device(conn: psycopg.Connection[Any], serial: str) -> bool:
    """Delete a device from the registry; False when it was not registered."""
    cur = conn.execute("DELETE FROM devices WHERE serial = %s", (serial,))
    conn.commit()
    return cur.rowcount > 0
