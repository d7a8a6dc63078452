"""Dead letters in Postgres: ``quarantine``, the table HR and operators read (and replay from).

Rows are written from ``attendance.dlq`` by the worker's ledger (streams/ledger.py), one per
message, keyed by the message's partition and offset, so writing a message twice changes
nothing. Nothing is dropped: a message that is not a valid QuarantineRecord still gets a row
(reason ``undecodable_event``, stage ``stream``) holding its bytes, and text that Postgres
cannot store (NUL, lone surrogates) is replaced rather than failing the ledger's batch.

``tapstream quarantine replay`` (infra/quarantine.py) sets ``replayed_at`` and ``replay_note``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from schemas.codec import decode
from schemas.quarantine import QuarantineRecord, Reason, Stage
from sinks.rows import pivot
from tapstream.errors import ContractError

logger = logging.getLogger(__name__)

_INT32 = 2**31 - 1
_INT64 = 2**63 - 1

# One statement for the whole batch: rowcount is then exactly the rows newly inserted.
_INSERT = """
INSERT INTO quarantine (dlq_partition, dlq_offset, reason, detail, stage, device_serial, original,
    original_size, source_topic, source_partition, source_offset, quarantined_at)
SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::bytea[], %s::integer[], %s::text[], %s::integer[], %s::bigint[], %s::timestamptz[])
ON CONFLICT (dlq_partition, dlq_offset) DO NOTHING
"""


@dataclass(frozen=True)
class DlqMessage:
    """One attendance.dlq message as consumed."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class QuarantineRowValues:
    """The columns the ledger writes for one message (replay columns start empty)."""

    dlq_partition: int
    dlq_offset: int
    reason: str
    detail: str
    stage: str
    device_serial: str | None
    original: bytes
    original_size: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    quarantined_at: datetime


def quarantine_row(message: DlqMessage, *, now: datetime | None = None) -> QuarantineRowValues:
    """The row for a DLQ message: its record's fields, or an undecodable_event row with its bytes."""
    if message.value is None:
        return _undecodable(message, "empty message (null value)", now)
    try:
        record = decode(QuarantineRecord, message.value)
        original = record.original()
    except ContractError as exc:
        return _undecodable(message, exc.detail, now)
    except ValueError as exc:  # binascii.Error: original_b64 is not base64
        return _undecodable(message, f"original_b64: {exc}", now)
    if not _fits(record):
        return _undecodable(message, "a size, partition or offset is out of range", now)
    return QuarantineRowValues(
        dlq_partition=message.partition,
        dlq_offset=message.offset,
        reason=record.reason.value,
        detail=_text(record.detail),
        stage=record.stage.value,
        device_serial=_optional_text(record.device_serial),
        original=original,
        original_size=record.original_size,
        source_topic=_optional_text(record.source_topic),
        source_partition=record.source_partition,
        source_offset=record.source_offset,
        # A record without an offset is read as UTC rather than the session's zone.
        quarantined_at=_aware(record.quarantined_at),
    )


def write_quarantine(cur: psycopg.Cursor[Any], messages: Sequence[DlqMessage]) -> int:
    """Insert one row per message inside the caller's transaction; return the rows newly inserted.

    Driver errors propagate (the caller maps them with sinks.postgres.translate).
    """
    if not messages:
        return 0
    rows = [quarantine_row(m) for m in messages]
    cur.execute(_INSERT, pivot([_values(r) for r in rows]))
    inserted = max(cur.rowcount, 0)
    logger.info("quarantine: wrote batch rows=%d new=%d", len(rows), inserted)
    return inserted


def _values(row: QuarantineRowValues) -> tuple[Any, ...]:
    return (
        row.dlq_partition, row.dlq_offset, row.reason, row.detail, row.stage, row.device_serial,
        row.original, row.original_size, row.source_topic, row.source_partition, row.source_offset,
        row.quarantined_at,
    )


def _undecodable(message: DlqMessage, why: str, now: datetime | None) -> QuarantineRowValues:
    logger.warning("attendance.dlq %d:%d is not a quarantine record: %s", message.partition, message.offset, why)
    original = message.value or b""
    return QuarantineRowValues(
        dlq_partition=message.partition,
        dlq_offset=message.offset,
        reason=Reason.UNDECODABLE_EVENT.value,
        detail=_text(f"the dead-letter message is not a quarantine record: {why}"),
        stage=Stage.STREAM.value,
        device_serial=_optional_text(message.key.decode("utf-8", "replace")) if message.key else None,
        original=original,
        original_size=len(original),
        source_topic=None,
        source_partition=None,
        source_offset=None,
        quarantined_at=now or datetime.now(UTC),
    )


def _fits(record: QuarantineRecord) -> bool:
    # The columns are integer / bigint: a forged value must not fail the ledger's whole batch.
    checks = ((record.original_size, _INT32), (record.source_partition, _INT32), (record.source_offset, _INT64))
    return all(value is None or -limit - 1 <= value <= limit for value, limit in checks)


def _text(value: str) -> str:
    """Text Postgres accepts: no NUL, no lone surrogate (both would fail the batch)."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _optional_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
