"""The raw-punch event: one clock-in/out as read from a terminal, pull or push alike.

Written by producers to ``attendance.raw`` (key = device serial, value = JSON), read by the
stream worker, stored by the sinks. Version history is in ``schemas/README.md``.

``event_id`` is a UUIDv5 of (device serial, user code, device-local time, punch state), so the
same punch read twice — a re-sent push batch, a poll overlapping live capture, a producer that
crashed and re-sent its spool — carries the same id everywhere, and every sink can be idempotent
on it. The verify mode is deliberately not part of the id: some firmware reports a different
verify code for the same record on a re-read.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

RAW_PUNCH_VERSION: Final = 1

# Fixed forever: changing it changes every event id and breaks idempotency across versions.
EVENT_ID_NAMESPACE = uuid.UUID("6f1d7c2e-3b4a-5e8f-9a10-7c2b4d6e8f01")

DEVICE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class PunchSource(StrEnum):
    """How the punch reached Tapstream."""

    PULL_LIVE = "pull-live"
    PULL_POLL = "pull-poll"
    PUSH = "push"


def compute_event_id(device_serial: str, user_code: str, device_time: datetime, punch_state: int) -> uuid.UUID:
    """Return the deterministic id of a punch; device_time is the naive local time as read."""
    key = "\x1f".join(
        (device_serial, user_code, device_time.strftime(DEVICE_TIME_FORMAT), str(punch_state))
    )
    return uuid.uuid5(EVENT_ID_NAMESPACE, key)


def zone(name: str) -> ZoneInfo:
    """Return the IANA zone, or raise ValueError with a clear message."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA timezone {name!r}") from exc


def resolve_utc(device_time: datetime, tz_name: str) -> datetime:
    """Turn a naive device wall-clock time into UTC using the device's IANA zone.

    In the hour repeated when clocks go back, the first occurrence is taken (fold=0); a time
    that does not exist because clocks went forward is read with the pre-transition offset.
    """
    local = device_time.replace(tzinfo=zone(tz_name), fold=0)
    return local.astimezone(UTC)


class RawPunch(BaseModel):
    """Version 1 of the raw-punch contract."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = RAW_PUNCH_VERSION
    event_id: uuid.UUID
    device_serial: str = Field(min_length=1, max_length=64)
    user_code: str = Field(min_length=1, max_length=64, description="PIN enrolled on the device")
    device_time: datetime = Field(description="device-local wall clock as read, no zone")
    device_tz: str = Field(description="IANA zone used to resolve punch_time")
    punch_time: datetime = Field(description="device_time resolved to UTC")
    punch_state: int = Field(ge=0, le=255, description="0 in, 1 out, 2 break-out, ... 255 undefined")
    verify_mode: int = Field(ge=0, le=65535, description="raw verification code (finger, face, ...)")
    work_code: str = Field("", max_length=64)
    source: PunchSource
    received_at: datetime = Field(description="when Tapstream received it, UTC")
    raw: str = Field(description="the record exactly as read (ADMS line, pull record)")
    clock_offset_s: float | None = Field(
        None, description="device clock minus true time when read, seconds (pull devices; None = unknown)"
    )

    @field_validator("device_time")
    @classmethod
    def _naive(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            raise ValueError("device_time must be naive: it is the device's wall clock")
        return value

    @field_validator("punch_time", "received_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() != timedelta(0):
            raise ValueError("must be a UTC timestamp")
        return value

    @field_validator("device_tz")
    @classmethod
    def _iana(cls, value: str) -> str:
        zone(value)
        return value


def make_raw_punch(
    *,
    device_serial: str,
    user_code: str,
    device_time: datetime,
    device_tz: str,
    punch_state: int,
    verify_mode: int,
    source: PunchSource,
    raw: str,
    received_at: datetime,
    work_code: str = "",
    clock_offset_s: float | None = None,
) -> RawPunch:
    """Build a punch, computing its event id and UTC time (raises ValueError if invalid)."""
    return RawPunch(
        event_id=compute_event_id(device_serial, user_code, device_time, punch_state),
        device_serial=device_serial,
        user_code=user_code,
        device_time=device_time,
        device_tz=device_tz,
        punch_time=resolve_utc(device_time, device_tz),
        punch_state=punch_state,
        verify_mode=verify_mode,
        work_code=work_code,
        source=source,
        received_at=received_at,
        raw=raw,
        clock_offset_s=clock_offset_s,
    )


class EnrichedPunch(BaseModel):
    """A valid, de-duplicated punch with its employee: what the sinks store."""

    model_config = ConfigDict(frozen=True)

    punch: RawPunch
    employee_id: str
    source_partition: int = Field(-1, description="partition of attendance.raw it came from")
    source_offset: int = Field(-1, description="offset in that partition (lineage)")
