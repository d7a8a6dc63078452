"""The live-punch event: a punch as it was recorded, for people watching in real time.

Written by the worker to ``attendance.live`` (key = device serial) after every sink holds the
punch, so the live feed never shows a punch HR cannot find. The same payload for pull and push
devices. Device name and site are the registry's at the time the monitor shows it (they are
display names, not part of the record); the monitor adds them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.punch import EnrichedPunch, PunchSource

LIVE_PUNCH_VERSION: Final = 1


class LivePunch(BaseModel):
    """Version 1 of the live-punch contract."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = LIVE_PUNCH_VERSION
    event_id: uuid.UUID
    device_serial: str
    user_code: str
    employee_id: str = Field(description="the HR system's id of the employee")
    employee_name: str = ""
    punch_time: datetime = Field(description="UTC")
    device_time: datetime = Field(description="device-local wall clock as read, no zone")
    device_tz: str
    punch_state: int
    verify_mode: int
    source: PunchSource
    received_at: datetime = Field(description="when Tapstream received it, UTC")
    recorded_at: datetime = Field(description="when every sink held it, UTC")


def live_punch(row: EnrichedPunch, employee_name: str, recorded_at: datetime) -> LivePunch:
    """The live event for a stored enriched punch."""
    p = row.punch
    return LivePunch(
        event_id=p.event_id, device_serial=p.device_serial, user_code=p.user_code,
        employee_id=row.employee_id, employee_name=employee_name, punch_time=p.punch_time,
        device_time=p.device_time, device_tz=p.device_tz, punch_state=p.punch_state,
        verify_mode=p.verify_mode, source=p.source, received_at=p.received_at, recorded_at=recorded_at,
    )
