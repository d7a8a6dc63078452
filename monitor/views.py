"""What the monitor shows, as plain functions: the device grid and the JSON of each event.

A pull device's row comes from its latest ``DeviceStatus`` (online = connected). A push device
reports no status: its row comes from the registry, its ``last_seen`` is the newest punch the
monitor has seen from it (received_at), and it is online while that is younger than
``settings.alerts.device_offline_s``. Device name and site are the registry's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from producers.registry import DeviceInfo
from schemas.alert import Alert
from schemas.device_status import DeviceStatus
from schemas.live import LivePunch

Lookup = Callable[[str], DeviceInfo | None]


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def log_used_pct(records: int | None, capacity: int | None) -> float | None:
    """How full a device's attendance log is, percent (None when a count is unknown)."""
    if records is None or not capacity:
        return None
    return round(records / capacity * 100, 1)


def pull_row(serial: str, info: DeviceInfo | None, status: DeviceStatus | None) -> dict[str, Any]:
    """The grid row of a pull device (registered, or only known by its status)."""
    return {
        "serial": serial,
        "name": info.name if info else (status.name if status else ""),
        "site": info.site if info else (status.site if status else ""),
        "kind": "pull",
        "online": bool(status and status.connected),
        "state": status.state.value if status else "unknown",
        "last_seen": iso(status.last_seen) if status else None,
        "clock_offset_s": status.clock_offset_s if status else None,
        "log_used_pct": log_used_pct(status.records, status.records_capacity) if status else None,
        "records": status.records if status else None,
        "records_capacity": status.records_capacity if status else None,
    }


def push_row(serial: str, info: DeviceInfo | None, last_seen: datetime | None, now: datetime,
             offline_after_s: float) -> dict[str, Any]:
    """The grid row of a push device: online while its newest punch is recent."""
    online = last_seen is not None and (now - last_seen).total_seconds() < offline_after_s
    return {
        "serial": serial,
        "name": info.name if info else "",
        "site": info.site if info else "",
        "kind": "push",
        "online": online,
        "state": "receiving" if online else ("silent" if last_seen else "unseen"),
        "last_seen": iso(last_seen),
        "clock_offset_s": None,
        "log_used_pct": None,
        "records": None,
        "records_capacity": None,
    }


def punch_data(event: LivePunch, info: DeviceInfo | None) -> dict[str, Any]:
    """The ``punch`` event: the LivePunch fields plus the registry's device name and site."""
    data: dict[str, Any] = event.model_dump(mode="json")
    data["device_name"] = info.name if info else ""
    data["site"] = info.site if info else ""
    return data


def alert_data(alert: Alert) -> dict[str, Any]:
    data: dict[str, Any] = alert.model_dump(mode="json")
    return data


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclass
class DeviceBoard:
    """Every device's latest state as the monitor knows it: pull statuses and push activity."""

    lookup: Lookup
    devices: Callable[[], Mapping[str, DeviceInfo]]
    offline_after_s: float
    statuses: dict[str, DeviceStatus] = field(default_factory=dict)
    push_seen: dict[str, datetime] = field(default_factory=dict)
    _push_online: dict[str, bool] = field(default_factory=dict)

    def is_push(self, serial: str) -> bool:
        info = self.lookup(serial)
        return info is not None and info.kind == "push"

    def on_status(self, status: DeviceStatus) -> dict[str, Any]:
        """Take a pull device's status; its new grid row."""
        self.statuses[status.device_serial] = status
        return pull_row(status.device_serial, self.lookup(status.device_serial), status)

    def on_punch(self, event: LivePunch, now: datetime) -> dict[str, Any] | None:
        """Note a push device's punch; its new row when it came online (or was first seen)."""
        serial = event.device_serial
        if not self.is_push(serial):
            return None
        seen = self.push_seen.get(serial)
        if seen is None or event.received_at > seen:
            self.push_seen[serial] = event.received_at
        return self._push_change(serial, now)

    def changed_push_rows(self, now: datetime) -> list[dict[str, Any]]:
        """Rows of push devices whose online state changed since last asked (they fell silent)."""
        rows = [self._push_change(serial, now) for serial in sorted(self.push_seen)]
        return [row for row in rows if row is not None]

    def _push_change(self, serial: str, now: datetime) -> dict[str, Any] | None:
        row = push_row(serial, self.lookup(serial), self.push_seen.get(serial), now, self.offline_after_s)
        if self._push_online.get(serial) == row["online"]:
            return None
        self._push_online[serial] = row["online"]
        return row

    def rows(self, now: datetime) -> list[dict[str, Any]]:
        """The grid: registered devices and devices known only by a status, sorted by serial."""
        registered = self.devices()
        serials = sorted(set(registered) | set(self.statuses))
        out = []
        for serial in serials:
            info = registered.get(serial)
            if info is not None and info.kind == "push":
                out.append(push_row(serial, info, self.push_seen.get(serial), now, self.offline_after_s))
            else:
                out.append(pull_row(serial, info, self.statuses.get(serial)))
        return out
