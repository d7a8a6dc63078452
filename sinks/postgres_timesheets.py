"""Recompute the timesheets a PostgreSQL batch touched, inside that batch's transaction.

The batch's rows say which (employee, work day) pairs it touched; every punch of those days is
read back from ``attendance_records`` (the batch's new rows included: same transaction) and the
rules in sinks.timesheets rebuild each day whole. So a late punch, a re-enriched punch, or a
replay recomputes exactly the days it belongs to, and a repeated batch changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import psycopg

from sinks.timesheets import DayPunch, Timesheet, build, work_day
from tapstream.settings import TimesheetSettings

# One index range per touched (employee, work day), never an employee's whole history.
_PUNCHES = """
SELECT r.employee_id, r.punch_time, r.device_time, r.punch_state, r.device_tz
FROM unnest(%s::text[], %s::timestamp[]) AS t(employee_id, day_start)
JOIN attendance_records r ON r.employee_id = t.employee_id
    AND r.device_time >= t.day_start AND r.device_time < t.day_start + interval '1 day'
"""
_UPSERT = """
INSERT INTO timesheets (employee_id, work_day, timezone, first_in, last_out, worked_seconds, punches, pairs, flags)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (employee_id, work_day) DO UPDATE SET
    timezone = EXCLUDED.timezone, first_in = EXCLUDED.first_in, last_out = EXCLUDED.last_out,
    worked_seconds = EXCLUDED.worked_seconds, punches = EXCLUDED.punches, pairs = EXCLUDED.pairs,
    flags = EXCLUDED.flags, computed_at = now()
"""

_DELETE = "DELETE FROM timesheets WHERE employee_id = %s AND work_day = %s"

Key = tuple[str, date]


def touched_days(rows: Iterable[tuple[str, datetime]], rules: TimesheetSettings) -> set[Key]:
    """The (employee, work day) pairs of (employee, device time) rows."""
    return {(employee, work_day(local, rules.day_start)) for employee, local in rows}


def ask_punches(cur: psycopg.Cursor[Any], days: set[Key], rules: TimesheetSettings) -> None:
    """Query every punch of ``days`` (in a pipeline the answer comes with the others; read it
    with ``day_punches``)."""
    keys = sorted(days)
    starts = [datetime.combine(day, rules.day_start) for _employee, day in keys]
    cur.execute(_PUNCHES, ([e for e, _ in keys], starts))


def day_punches(cur: psycopg.Cursor[Any], rules: TimesheetSettings) -> tuple[dict[Key, list[DayPunch]], dict[Key, str]]:
    """The answer of ``ask_punches``: each day's punches, and the zone of its first punch."""
    punches: dict[Key, list[DayPunch]] = defaultdict(list)
    zones: dict[Key, str] = {}
    for employee, at, local, state, zone in cur.fetchall():
        key = (employee, work_day(local, rules.day_start))
        punches[key].append(DayPunch(at, local, state))
        zones.setdefault(key, zone)
    return punches, zones


def write_sheets(cur: psycopg.Cursor[Any], rules: TimesheetSettings, days: set[Key],
                 punches: dict[Key, list[DayPunch]], zones: dict[Key, str]) -> int:
    """Rebuild each of ``days`` whole from its punches; a day left without punches loses its
    timesheet. Returns how many were written."""
    sheets = [(key, build(key[1], punches[key], rules.undefined_state)) for key in sorted(punches)]
    if sheets:
        cur.executemany(_UPSERT, [_row(key, zones[key], sheet) for key, sheet in sheets])
    emptied = sorted(days - punches.keys())
    if emptied:
        cur.executemany(_DELETE, emptied)
    return len(sheets)


def _row(key: Key, zone: str, sheet: Timesheet) -> tuple[object, ...]:
    return (key[0], key[1], zone, sheet.first_in, sheet.last_out, sheet.worked_s, sheet.punches, sheet.pairs,
            list(sheet.flags))
