"""Parked punches in Postgres: ``unmatched_punches``, the table HR reads and the worker re-matches from.

Rows are written from ``attendance.unmatched`` by the worker's ledger (streams/ledger.py) and
resolved by the records sink in the same transaction that lands the punch in
``attendance_records`` (sinks/postgres.py). Between the two, the worker's re-matcher
(streams/rematch.py) reads the open rows whose code has since been mapped and re-sends them.

Writes are idempotent on event_id. A punch parked again (a device re-send, a re-sent punch
still unmapped) refreshes ``last_parked_at`` and its reason but never reopens a resolved row:
once a punch is in attendance_records it stays there.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from schemas.codec import decode
from schemas.punch import RawPunch
from tapstream.errors import ContractError

logger = logging.getLogger(__name__)

REASON_HEADER = "tapstream-reason"


@dataclass(frozen=True)
class ParkedMessage:
    """One attendance.unmatched message as consumed."""

    partition: int
    offset: int
    value: bytes | None
    reason: str


@dataclass(frozen=True)
class ParkedPunch:
    """An open parked punch, as the re-matcher re-sends it."""

    event_id: uuid.UUID
    device_serial: str
    user_code: str
    punch: bytes  # the RawPunch exactly as it was on attendance.raw


_UPSERT = """
INSERT INTO unmatched_punches AS u (event_id, device_serial, user_code, device_time, device_tz, punch_time,
    punch_state, verify_mode, reason, punch, resolved_at)
SELECT %(event_id)s, %(device_serial)s, %(user_code)s, %(device_time)s, %(device_tz)s, %(punch_time)s,
    %(punch_state)s, %(verify_mode)s, %(reason)s, %(punch)s,
    -- already recorded (the ledger lagged behind a re-match): resolved from the start
    (SELECT now() FROM attendance_records r WHERE r.event_id = %(event_id)s)
ON CONFLICT (event_id) DO UPDATE SET last_parked_at = now(), reason = EXCLUDED.reason
    WHERE u.resolved_at IS NULL
"""

_OPEN_CODES = "SELECT DISTINCT user_code FROM unmatched_punches WHERE resolved_at IS NULL"
_DUE = """
SELECT event_id, device_serial, user_code, punch FROM unmatched_punches
WHERE resolved_at IS NULL AND user_code = ANY(%(codes)s)
  AND (rematched_at IS NULL OR rematched_at < now() - make_interval(secs => %(cooldown_s)s))
ORDER BY device_serial, punch_time
LIMIT %(limit)s
"""
_MARK = "UPDATE unmatched_punches SET rematched_at = now() WHERE event_id = ANY(%(ids)s)"
# The event ids of a batch being recorded, as one array (%b: dumped binary, as uuid[]).
RESOLVE = "UPDATE unmatched_punches SET resolved_at = now() WHERE event_id = ANY(%b) AND resolved_at IS NULL"


def parked_row(message: ParkedMessage) -> dict[str, Any] | None:
    """The unmatched_punches row for a message, or None if the value is not a RawPunch."""
    if message.value is None:
        return None
    try:
        punch = decode(RawPunch, message.value)
    except ContractError as exc:
        logger.error("attendance.unmatched %d:%d is not a punch, not parked in Postgres: %s",
                     message.partition, message.offset, exc)
        return None
    return {
        "event_id": punch.event_id, "device_serial": punch.device_serial, "user_code": punch.user_code,
        "device_time": punch.device_time, "device_tz": punch.device_tz, "punch_time": punch.punch_time,
        "punch_state": punch.punch_state, "verify_mode": punch.verify_mode, "reason": message.reason,
        "punch": message.value,
    }


def write_parked(cur: psycopg.Cursor[Any], messages: Sequence[ParkedMessage]) -> int:
    """Upsert the parked punches of ``messages`` (inside the caller's transaction); rows offered."""
    rows = [row for row in map(parked_row, messages) if row is not None]
    if rows:
        cur.executemany(_UPSERT, rows)
    return len(rows)


def open_codes(cur: psycopg.Cursor[Any]) -> list[str]:
    """User codes that still have unresolved parked punches."""
    return [code for (code,) in cur.execute(_OPEN_CODES)]


def due_punches(cur: psycopg.Cursor[Any], codes: Sequence[str], cooldown_s: float, limit: int) -> list[ParkedPunch]:
    """Open parked punches of ``codes`` not re-sent in the last ``cooldown_s`` seconds."""
    cur.execute(_DUE, {"codes": list(codes), "cooldown_s": cooldown_s, "limit": limit})
    return [ParkedPunch(eid, serial, code, bytes(punch)) for eid, serial, code, punch in cur.fetchall()]


def mark_rematched(cur: psycopg.Cursor[Any], ids: Sequence[uuid.UUID]) -> None:
    """Record that these parked punches were re-sent to attendance.raw just now."""
    cur.execute(_MARK, {"ids": list(ids)})
