"""Row shaping shared by the sinks: which columns an enriched punch fills, and their values.

Both stores hold the same punch columns; PostgreSQL also keeps the raw record (HR may need the
original line), ClickHouse leaves it out (analytics never reads it and it dominates row size).
``ingested_at`` is absent on purpose: each store fills it with its own clock.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.punch import EnrichedPunch

PUNCH_COLUMNS: tuple[str, ...] = (
    "event_id",
    "device_serial",
    "user_code",
    "employee_id",
    "device_time",
    "device_tz",
    "punch_time",
    "punch_state",
    "verify_mode",
    "work_code",
    "source",
    "received_at",
    "source_partition",
    "source_offset",
)
POSTGRES_COLUMNS: tuple[str, ...] = (*PUNCH_COLUMNS, "raw")
CLICKHOUSE_COLUMNS: tuple[str, ...] = PUNCH_COLUMNS

_DEVICE_TIME = PUNCH_COLUMNS.index("device_time")

PunchValues = tuple[uuid.UUID, str, str, str, datetime, str, datetime, int, int, str, str, datetime, int, int]


def punch_values(row: EnrichedPunch) -> PunchValues:
    """Return the values of PUNCH_COLUMNS for one row; device_time stays naive (wall clock)."""
    punch = row.punch
    return (
        punch.event_id,
        punch.device_serial,
        punch.user_code,
        row.employee_id,
        punch.device_time,
        punch.device_tz,
        punch.punch_time,
        punch.punch_state,
        punch.verify_mode,
        punch.work_code,
        punch.source.value,
        punch.received_at,
        row.source_partition,
        row.source_offset,
    )


def postgres_row(row: EnrichedPunch) -> tuple[object, ...]:
    """Return the values of POSTGRES_COLUMNS for one row."""
    return (*punch_values(row), row.punch.raw)


def clickhouse_row(row: EnrichedPunch) -> tuple[object, ...]:
    """Return the values of CLICKHOUSE_COLUMNS for one row.

    device_time is the device's wall clock, kept in a DateTime64(0, 'UTC') column so it reads back
    unchanged; it is tagged UTC here because the driver would otherwise convert a naive value
    with the *process's* local zone and shift it.
    """
    values = punch_values(row)
    wall_clock = row.punch.device_time.replace(tzinfo=UTC)
    return (*values[:_DEVICE_TIME], wall_clock, *values[_DEVICE_TIME + 1 :])


def pivot(values: Sequence[tuple[object, ...]]) -> list[list[object]]:
    """Turn row tuples into one list per column (an empty list for no rows)."""
    return [list(column) for column in zip(*values, strict=True)]


def content_fingerprint(values: Sequence[tuple[object, ...]]) -> str:
    """Return a hex digest of the set of distinct row tuples.

    Order and repeats do not change it, so a retry of the same rows yields the same digest;
    a replay that carries corrected values (a fixed employee mapping) yields a different one.
    """
    # str() of each value is canonical (UUIDs hyphenated, times ISO with their offset) whatever
    # tzinfo object the decoder produced. Sorting strings, not tuples: UUID comparison is
    # Python code and made the digest cost more than the insert.
    lines = sorted({"\x1f".join(map(str, row)) for row in values})
    # surrogatepass: a malformed string must still hash (the insert then rejects it).
    return hashlib.sha256("\x1e".join(lines).encode("utf-8", "surrogatepass")).hexdigest()
