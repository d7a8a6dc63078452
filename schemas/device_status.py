"""The device-status event: how a pull device is doing, as its producer sees it.

Written by `tapstream pull` to ``devices.status`` (compacted, key = device serial) whenever a
device's state changes, after every info refresh and catch-up, and at least once a minute; the
latest record per serial is the device's current status. Monitors and alerting read it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

DEVICE_STATUS_VERSION: Final = 1


class LinkState(StrEnum):
    """What the producer is doing with the device right now."""

    CONNECTING = "connecting"
    CATCHING_UP = "catching-up"  # downloading the log, producing what is new
    LIVE = "live"  # live capture, with periodic catch-up passes
    POLLING = "polling"  # realtime disabled after a long failure: catch-up passes only
    BACKOFF = "backoff"  # the last attempt failed; waiting before the next
    STOPPED = "stopped"  # disabled or removed in the registry, or the producer stopped


class DeviceStatus(BaseModel):
    """Version 1 of the device-status contract."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = DEVICE_STATUS_VERSION
    device_serial: str
    name: str = ""
    site: str = ""
    address: str = Field("", description="transport://host:port the producer connects to")
    state: LinkState
    connected: bool
    realtime: bool = Field(True, description="False while a long-failing device is only polled")
    last_seen: datetime | None = Field(None, description="last successful exchange with the device, UTC")
    last_error: str | None = None
    consecutive_failures: int = 0
    failing_since: datetime | None = None
    alert: str | None = Field(None, description="set while the device is in an alert condition")
    reported_serial: str | None = Field(None, description="serial the device itself reports")
    firmware: str | None = None
    platform: str | None = None
    users: int | None = None
    users_capacity: int | None = None
    records: int | None = Field(None, description="attendance records in the device log")
    records_capacity: int | None = None
    clock_offset_s: float | None = Field(None, description="device clock minus true time, seconds")
    last_catchup_at: datetime | None = None
    produced_total: int = Field(0, description="punches produced since the producer started")
    reported_at: datetime
