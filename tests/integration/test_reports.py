"""Reports on the real engine: exact answers under duplicates, corrections and time zones.

The first tests write a known set of punches straight into a fresh database with merges
stopped, so the duplicate and corrected copies stay in parts of their own and only the views'
FINAL collapses them. They use the in-process store that test_sinks_clickhouse opens too:
chDB binds a process to one store path, so every in-process test shares that path.

The last test runs the pipeline: `tapstream report` answered by a running worker, then by the
command opening the store itself once the worker has stopped. This process never opens that
store (pipeline_helpers' docstring).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka.admin import AdminClient

from infra.employees import publish_employees
from infra.harness import wait_worker
from infra.migrate import migrate_clickhouse
from infra.reports import REPORTS, ReportResult, run_report
from schemas.employee import EmployeeRecord
from schemas.punch import EnrichedPunch, PunchSource, RawPunch, make_raw_punch
from sinks.clickhouse import ClickHouseSink, count_events
from tapstream.settings import AnalyticsSettings
from tests.integration.pipeline_helpers import Pipeline, clickhouse_counts, produce

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

DHAKA, BERLIN, NEW_YORK = ("DHAKA-1", "Asia/Dhaka"), ("BERLIN-1", "Europe/Berlin"), ("NEWYORK-1", "America/New_York")
D2, D3 = date(2026, 3, 2), date(2026, 3, 3)

# (attendance code, device, local device time, punch state, receipt delay in seconds)
PUNCHES: list[tuple[str, tuple[str, str], datetime, int, int]] = [
    ("A", DHAKA, datetime(2026, 3, 2, 5, 30), 0, 30),  # 23:30 UTC on the 1st: the device's 2nd
    ("A", DHAKA, datetime(2026, 3, 2, 14, 0), 1, 30),
    ("B", DHAKA, datetime(2026, 3, 2, 9, 7, 30), 0, 30),  # "B" is first mapped to E-WRONG
    ("B", DHAKA, datetime(2026, 3, 2, 17, 0), 1, 30),
    ("C", BERLIN, datetime(2026, 3, 2, 9, 5), 0, 30),  # the last on-time second
    ("D", BERLIN, datetime(2026, 3, 2, 9, 5, 1), 255, 30),  # no state: the day's first punch arrives
    ("D", BERLIN, datetime(2026, 3, 2, 12, 0), 255, 30),
    ("G", BERLIN, datetime(2026, 3, 2, 8, 0), 1, 30),  # present, never arrives
    ("F", NEW_YORK, datetime(2026, 3, 2, 7, 0), 1, 30),  # an out is no arrival
    ("F", NEW_YORK, datetime(2026, 3, 2, 9, 30), 0, 7200),  # delivered two hours late
    ("E", NEW_YORK, datetime(2026, 3, 2, 23, 50), 0, 30),  # already the 3rd in UTC
    ("A", DHAKA, datetime(2026, 3, 3, 8, 59, 59), 0, 30),
    ("C", BERLIN, datetime(2026, 3, 3, 10, 0), 4, 30),  # overtime-in is an arrival
    ("A", DHAKA, datetime(2026, 3, 4, 9, 30), 0, 30),  # outside [2nd, 4th)
    ("A", DHAKA, datetime(2026, 4, 1, 10, 0), 0, 30),  # another month (partition)
]
RIGHT = {code: f"E-{code}" for code in "ABCDEFG"}
WRONG = {**RIGHT, "B": "E-WRONG"}

EXPECTED: dict[str, list[list[Any]]] = {
    "daily-presence": [["2026-03-02", 7, 11, 3], ["2026-03-03", 2, 2, 2]],
    "arrivals-by-hour": [["2026-03-02", 5, 1], ["2026-03-02", 9, 4], ["2026-03-02", 23, 1],
                         ["2026-03-03", 8, 1], ["2026-03-03", 10, 1]],
    "lateness": [
        ["2026-03-02", "E-E", "23:50:00", "NEWYORK-1", 890],
        ["2026-03-02", "E-F", "09:30:00", "NEWYORK-1", 30],
        ["2026-03-02", "E-B", "09:07:30", "DHAKA-1", 7],
        ["2026-03-02", "E-D", "09:05:01", "BERLIN-1", 5],
        ["2026-03-03", "E-C", "10:00:00", "BERLIN-1", 60],
    ],
    "device-activity": [
        ["BERLIN-1", "2026-03-02", 4, 3, "08:00:00", "12:00:00", 2, 30],
        ["BERLIN-1", "2026-03-03", 1, 1, "10:00:00", "10:00:00", 0, 30],
        ["DHAKA-1", "2026-03-02", 4, 2, "05:30:00", "17:00:00", 0, 30],
        ["DHAKA-1", "2026-03-03", 1, 1, "08:59:59", "08:59:59", 0, 30],
        ["NEWYORK-1", "2026-03-02", 3, 2, "07:00:00", "23:50:00", 0, 7200],
    ],
}


def raw(code: str, device: tuple[str, str], local: datetime, state: int, delay_s: int) -> RawPunch:
    serial, tz = device
    punch = make_raw_punch(device_serial=serial, user_code=code, device_time=local, device_tz=tz, punch_state=state,
                           verify_mode=1, source=PunchSource.PUSH, raw=f"{code}\t{local}", received_at=datetime.now(UTC))
    return punch.model_copy(update={"received_at": punch.punch_time + timedelta(seconds=delay_s)})


def scenario() -> list[RawPunch]:
    return [raw(*spec) for spec in PUNCHES]


def enriched(punches: list[RawPunch], mapping: dict[str, str]) -> list[EnrichedPunch]:
    return [EnrichedPunch(punch=p, employee_id=mapping[p.user_code]) for p in punches]


@pytest.fixture
def written(chdb_client: Client) -> Iterator[str]:
    """A fresh database holding the scenario three times over: wrong, repeated, corrected."""
    database = f"r_{uuid.uuid4().hex[:12]}"
    migrate_clickhouse(chdb_client, database)
    chdb_client.command(f"SYSTEM STOP MERGES {database}.attendance_events")
    sink, punches = ClickHouseSink(chdb_client, database), scenario()
    sink.write_batch(enriched(punches, WRONG))
    sink.write_batch(enriched(punches[:8], WRONG))  # a replay of the first eight: duplicates
    sink.write_batch(enriched([p for p in punches if p.user_code == "B"], RIGHT))  # the mapping fixed
    assert count_events(chdb_client, database, final=False) == len(punches) + 8 + 2
    yield database
    chdb_client.command(f"DROP DATABASE IF EXISTS {database}")


def run(chdb_client: Client, database: str, name: str, start: date = D2, end: date = date(2026, 3, 4),
        analytics: AnalyticsSettings | None = None) -> ReportResult:
    return run_report(chdb_client, database, name, start, end, analytics or AnalyticsSettings())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_report_counts_every_punch_once_with_its_latest_values(chdb_client: Client, written: str, name: str) -> None:
    result = run(chdb_client, written, name)
    assert result.columns == [column for column, _ in REPORTS[name].columns]
    assert result.rows == EXPECTED[name]


def test_lateness_follows_the_analytics_settings(chdb_client: Client, written: str) -> None:
    half_past = AnalyticsSettings(work_start=time(9, 30), grace_minutes=0)
    assert run(chdb_client, written, "lateness", analytics=half_past).rows == [
        ["2026-03-02", "E-E", "23:50:00", "NEWYORK-1", 860],  # 09:30:00 sharp is on time
        ["2026-03-03", "E-C", "10:00:00", "BERLIN-1", 30],
    ]


def test_the_window_is_local_dates_from_inclusive_to_exclusive(chdb_client: Client, written: str) -> None:
    assert run(chdb_client, written, "daily-presence", D3, date(2026, 4, 2)).rows == [
        ["2026-03-03", 2, 2, 2], ["2026-03-04", 1, 1, 1], ["2026-04-01", 1, 1, 1],
    ]
    assert run(chdb_client, written, "daily-presence", date(2026, 3, 5), date(2026, 4, 1)).rows == []


def report_json(pipeline: Pipeline, name: str) -> tuple[list[dict[str, Any]], str]:
    """`tapstream report NAME` for [2026-03-02, 2026-03-04) as JSON: (rows, stderr)."""
    done = pipeline.run("report", name, "--from", "2026-03-02", "--to", "2026-03-04", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def as_rows(objects: list[dict[str, Any]]) -> list[list[Any]]:
    return [list(o.values()) for o in objects]


def employees(mapping: dict[str, str]) -> list[EmployeeRecord]:
    return [EmployeeRecord(attendance_code=code, employee_id=emp) for code, emp in mapping.items()]


def test_reports_from_the_running_worker_then_from_the_store(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    pipeline = make_pipeline(pg_schema.dsn)
    punches = scenario()
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(WRONG))
    first = pipeline.start_worker("worker-1")
    produce(pipeline.bootstrap, pipeline.raw, punches + punches[:3])  # the stream drops the repeats
    wait_worker(pipeline.stats_file, first, len(punches) + 3, 90)
    rows, log = report_json(pipeline, "lateness")
    assert "answered by the running worker" in log
    assert ["2026-03-02", "E-WRONG", "09:07:30", "DHAKA-1", 7] in as_rows(rows)
    assert first.stop() == 0

    # The mapping is fixed and the raw topic replayed by a new consumer group: every punch is
    # written again (duplicates in ClickHouse), B's with the right employee.
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(RIGHT))
    first_app, pipeline.app_id = pipeline.app_id, f"e2e-{uuid.uuid4().hex[:12]}"
    try:
        second = pipeline.start_worker("worker-2")
        wait_worker(pipeline.stats_file, second, len(punches) + 3, 90)
        for name, expected in EXPECTED.items():
            rows, log = report_json(pipeline, name)
            assert as_rows(rows) == expected, name
            assert "answered by the running worker" in log
        (pipeline.state_dir / "worker" / "reports.sock").unlink()  # as if its server were gone
        done = pipeline.run("report", "daily-presence")
        assert done.returncode == 1
        assert f"error: the embedded ClickHouse store {pipeline.state_dir / 'clickhouse'} is in use by pid {second.pid}" \
            in done.stderr
        assert second.stop() == 0
    finally:
        _drop_internal_topics(pipeline.bootstrap, first_app)

    for name, expected in EXPECTED.items():
        rows, log = report_json(pipeline, name)
        assert as_rows(rows) == expected, name
        assert "opened the embedded store" in log
    counts = clickhouse_counts(pipeline)
    assert counts["final"] == counts["distinct_ids"] == len(punches)
    assert counts["plain"] >= len(punches)  # the replayed copies, unless merged meanwhile


def _drop_internal_topics(bootstrap: str, app_id: str) -> None:
    """Drop the changelog topics of the first worker's group (the fixture drops the last one's)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id + "-")]
    for future in admin.delete_topics(names, operation_timeout=15).values() if names else []:
        future.exception(timeout=20)
