"""Named analytics reports over ClickHouse: the registry, running one, and printing its result.

Each report is one SELECT on a view of ``infra/migrations/clickhouse/0002_rollups.sql`` with
bound query parameters (``{name:Type}``, never string formatting). Those views read
``attendance_events`` with FINAL, so a report counts each punch once however often it was
written, with its latest (corrected) values. Days are the devices' local days; a window is
``[start, end)`` in local dates. Columns and rules: docs/analytics.md.

How a report reaches the store (a server, the running worker, or the embedded store opened
here) is infra.report_server.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tapstream.errors import ConfigError, StackError, first_line
from tapstream.settings import AnalyticsSettings

DEFAULT_DAYS = 7
UNKNOWN_TABLE_CODES = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE: migrations not applied yet
PLACEHOLDER = re.compile(r"\{(\w+):")

Cell = str | int | float | None


@dataclass(frozen=True)
class Report:
    """One named report: what it answers, its columns (name, meaning) and its SQL."""

    name: str
    description: str
    columns: tuple[tuple[str, str], ...]
    sql: str


@dataclass(frozen=True)
class Window:
    """Local dates ``start`` (inclusive) to ``end`` (exclusive)."""

    start: date
    end: date


@dataclass(frozen=True)
class ReportResult:
    """Column names and rows of plain JSON values (dates and times as ISO text)."""

    columns: list[str]
    rows: list[list[Cell]]

    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportResult:
        return cls(list(data["columns"]), [list(row) for row in data["rows"]])


DAILY_PRESENCE = Report(
    "daily-presence",
    "per local day: employees present, punches, devices used",
    (("day", "local date"), ("employees", "distinct employees who punched"),
     ("punches", "punches (each event once)"), ("devices", "devices that recorded a punch")),
    """SELECT day, employees, punches, devices
FROM {database:Identifier}.daily_presence
WHERE day >= {day_from:Date} AND day < {day_to:Date}
ORDER BY day""",
)

ARRIVALS_BY_HOUR = Report(
    "arrivals-by-hour",
    "per local day and hour: employees whose first arrival of the day fell in that hour",
    (("day", "local date"), ("hour", "local hour, 0-23"), ("arrivals", "first arrivals in that hour")),
    """SELECT day, hour, arrivals
FROM {database:Identifier}.arrivals_by_hour
WHERE day >= {day_from:Date} AND day < {day_to:Date}
ORDER BY day, hour""",
)

LATENESS = Report(
    "lateness",
    "late first arrivals only: after analytics.work_start + grace_minutes (local), latest first",
    (("day", "local date"), ("employee_id", "employee"), ("first_arrival", "local time of the first arrival"),
     ("device_serial", "where they arrived"), ("minutes_late", "whole minutes after work_start")),
    """SELECT day, employee_id, formatDateTime(first_arrival, '%H:%i:%S') AS first_arrival, device_serial,
       intDiv(late_s, 60) AS minutes_late
FROM (
    SELECT day, employee_id, first_arrival, device_serial,
           dateDiff('second', toStartOfDay(first_arrival), first_arrival) - {work_start_s:UInt32} AS late_s
    FROM {database:Identifier}.daily_arrivals
    WHERE day >= {day_from:Date} AND day < {day_to:Date}
)
WHERE late_s > {grace_s:UInt32}
ORDER BY day, minutes_late DESC, employee_id""",
)

DEVICE_ACTIVITY = Report(
    "device-activity",
    "per device and local day: punches, employees, first/last punch, state-less punches, delivery delay",
    (("device_serial", "device"), ("day", "local date"), ("punches", "punches (each event once)"),
     ("employees", "distinct employees"), ("first_punch", "first punch, device clock"),
     ("last_punch", "last punch, device clock"), ("undefined_state", "punches without a state (255)"),
     ("max_delay_s", "longest receipt delay after the punch, seconds (negative: device clock ahead)")),
    """SELECT device_serial, day, punches, employees,
       formatDateTime(first_punch, '%H:%i:%S') AS first_punch,
       formatDateTime(last_punch, '%H:%i:%S') AS last_punch,
       undefined_state, max_delay_s
FROM {database:Identifier}.device_activity
WHERE day >= {day_from:Date} AND day < {day_to:Date}
ORDER BY device_serial, day""",
)

REPORTS: dict[str, Report] = {r.name: r for r in (DAILY_PRESENCE, ARRIVALS_BY_HOUR, LATENESS, DEVICE_ACTIVITY)}


def get_report(name: str) -> Report:
    """The report called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return REPORTS[name]
    except KeyError:
        raise ConfigError(f"no report {name!r}; known: {', '.join(REPORTS)}") from None


def resolve_window(start: date | None, end: date | None, today: date, days: int = DEFAULT_DAYS) -> Window:
    """The window asked for; by default the ``days`` local days up to and including ``today``."""
    end = end or today + timedelta(days=1)
    start = start or end - timedelta(days=days)
    if start >= end:
        raise ConfigError(f"empty window: --from {start} must be before --to {end} (--to is exclusive)")
    return Window(start, end)


def seconds_of_day(value: time) -> int:
    """Seconds since midnight of a wall-clock time (sub-second part dropped)."""
    return value.hour * 3600 + value.minute * 60 + value.second


def report_parameters(report: Report, database: str, window: Window, analytics: AnalyticsSettings) -> dict[str, object]:
    """The values of exactly the placeholders ``report.sql`` uses."""
    values: dict[str, object] = {
        "database": database,
        "day_from": window.start,
        "day_to": window.end,
        "work_start_s": seconds_of_day(analytics.work_start),
        "grace_s": 60 * analytics.grace_minutes,
    }
    return {name: values[name] for name in sorted(set(PLACEHOLDER.findall(report.sql)))}


def run_report(
    client: Client, database: str, name: str, start: date, end: date, analytics_settings: AnalyticsSettings
) -> ReportResult:
    """Run report ``name`` for local days [start, end) on ``client``; StackError if the query fails."""
    report = get_report(name)
    params = report_parameters(report, database, Window(start, end), analytics_settings)
    try:
        result = client.query(report.sql, parameters=params)
    except ClickHouseError as exc:
        raise _query_error(report, database, exc) from exc
    return ReportResult(list(result.column_names), [[cell(v) for v in row] for row in result.result_rows])


def _query_error(report: Report, database: str, exc: ClickHouseError) -> StackError:
    first = first_line(exc)
    if getattr(exc, "code", None) in UNKNOWN_TABLE_CODES:
        return StackError(f"ClickHouse database {database} lacks the report views (migration 0002_rollups): "
                          f"run `tapstream stack up` or start the worker once ({first})")
    return StackError(f"report {report.name} failed in ClickHouse: {first}")


def cell(value: object) -> Cell:
    """A query value as plain JSON: dates and times as ISO text, anything else odd as str."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def format_table(result: ReportResult) -> str:
    """Aligned columns under a header; numbers right-aligned; '(no rows)' when empty."""
    texts = [["" if v is None else str(v) for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(row[i]) for row in texts]) for i, c in enumerate(result.columns)]
    numeric = [bool(result.rows) and all(isinstance(row[i], int | float) for row in result.rows)
               for i in range(len(result.columns))]

    def line(values: list[str]) -> str:
        cells = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(cells).rstrip()

    out = [line(result.columns), line(["-" * w for w in widths])]
    out += [line(row) for row in texts] or ["(no rows)"]
    return "\n".join(out)


def format_csv(result: ReportResult) -> str:
    """RFC 4180 CSV with a header row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return buffer.getvalue().rstrip("\n")


def format_json(result: ReportResult) -> str:
    """A JSON array with one object per row, keys in column order."""
    return json.dumps([dict(zip(result.columns, row)) for row in result.rows])


FORMATS: dict[str, Callable[[ReportResult], str]] = {"table": format_table, "csv": format_csv, "json": format_json}


def render(result: ReportResult, fmt: str) -> str:
    """``result`` as text in format ``fmt`` (table, csv or json)."""
    try:
        return FORMATS[fmt](result)
    except KeyError:
        raise ConfigError(f"no output format {fmt!r}; known: {', '.join(FORMATS)}") from None
