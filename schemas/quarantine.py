"""The quarantine (dead-letter) record: anything Tapstream could not accept, kept with its reason.

Written to ``attendance.dlq`` by producers (bad ADMS lines, unknown devices, unknown tables,
oversized bodies) and by the stream (undecodable events, data a sink rejects). The original
bytes are kept base64-encoded so nothing is lost, whatever they were.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

QUARANTINE_VERSION: Final = 1


class Reason(StrEnum):
    """Why a record was quarantined. Stable codes: operators filter and replay by them."""

    MALFORMED_LINE = "malformed_line"  # not the TAB-separated shape of an ATTLOG row
    MISSING_FIELDS = "missing_fields"  # fewer fields than a punch needs
    BAD_TIMESTAMP = "bad_timestamp"  # unparseable or impossible time
    BAD_FIELD = "bad_field"  # PIN, state or verify code out of range
    NOT_TEXT = "not_text"  # bytes that do not decode as text
    UNKNOWN_TABLE = "unknown_table"  # an ADMS table Tapstream does not know
    UNKNOWN_DEVICE = "unknown_device"  # a serial absent from the device registry
    BODY_TOO_LARGE = "body_too_large"  # request body over the configured limit
    UNDECODABLE_EVENT = "undecodable_event"  # a Kafka value that is not a valid event
    SINK_REJECTED = "sink_rejected"  # a sink refused the row itself (permanent error)
    IMPLAUSIBLE_TIME = "implausible_time"  # before validation.earliest_punch (clock reset) or far future
    UNKNOWN_STATE = "unknown_state"  # a punch state outside validation.punch_states


class Stage(StrEnum):
    """Where in the pipeline the record was stopped."""

    PUSH = "push"
    PULL = "pull"
    STREAM = "stream"


class QuarantineRecord(BaseModel):
    """Version 1 of the quarantine contract."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = QUARANTINE_VERSION
    reason: Reason
    detail: str = Field(description="human-readable explanation")
    stage: Stage
    device_serial: str | None = None
    original_b64: str = Field(description="the offending bytes, base64")
    original_size: int = Field(ge=0, description="size of the offending input in bytes")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    quarantined_at: datetime

    def original(self) -> bytes:
        """The offending bytes."""
        return base64.b64decode(self.original_b64)


def quarantine(
    reason: Reason,
    detail: str,
    stage: Stage,
    original: bytes,
    *,
    device_serial: str | None = None,
    source_topic: str | None = None,
    source_partition: int | None = None,
    source_offset: int | None = None,
    original_size: int | None = None,
    now: datetime | None = None,
) -> QuarantineRecord:
    """Build a quarantine record; original_size defaults to len(original) (set it if truncated)."""
    return QuarantineRecord(
        reason=reason,
        detail=detail,
        stage=stage,
        device_serial=device_serial,
        original_b64=base64.b64encode(original).decode("ascii"),
        original_size=len(original) if original_size is None else original_size,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        quarantined_at=now or datetime.now(UTC),
    )
