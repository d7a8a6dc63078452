"""The alert event: one incident opening, and later its one resolution.

Written to ``alerts`` (key = the incident key ``kind:subject``) by the monitor's alert engine.
An incident is opened once (``state=firing``) when its condition has held for its grace time
and resolved once (``state=resolved``) when it clears; nothing is re-sent while it lasts, so a
flapping probe or a restart does not make a storm.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

ALERT_VERSION: Final = 1


class AlertKind(StrEnum):
    """What went wrong (stable codes, only ever added)."""

    DEVICE_OFFLINE = "device_offline"
    CLOCK_DRIFT = "clock_drift"
    DEVICE_LOG_FULL = "device_log_full"
    SPOOL_BACKLOG = "spool_backlog"
    CONSUMER_LAG = "consumer_lag"
    SINK_FAILING = "sink_failing"


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(BaseModel):
    """Version 1 of the alert contract."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = ALERT_VERSION
    alert_id: str = Field(description="one id per incident: its firing and its resolution share it")
    kind: AlertKind
    subject: str = Field(description="what it is about: a device serial, a sink, a spool, a consumer group")
    state: AlertState
    severity: Severity = Severity.WARNING
    message: str
    value: float | None = Field(None, description="the measurement that crossed the threshold")
    threshold: float | None = None
    started_at: datetime = Field(description="when the condition was first seen, UTC")
    at: datetime = Field(description="when this event (firing or resolution) was raised, UTC")

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.subject}"
