"""The generated scenario (tests/scenario.py) through the real worker, Postgres outage included.

Duplicates, badges HR maps only at the end, device clocks reset to 2000, overnight shifts,
punches of earlier days arriving last, and a Postgres server stopped in the middle: the records
and timesheets must be exactly what the scenario's plan says, with nothing parked left open.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import psycopg

from infra.employee_sync import read_topic
from infra.harness import worker_stats
from infra.migrate import migrate_postgres
from infra.postgres_server import PostgresServer
from tests.integration.pipeline_helpers import Pipeline, clickhouse_counts, pg_count, produce, wait_for
from tests.scenario import DAY_START, LATE_MAPPED, ExpectedDay, Scenario, generate

FAST = {
    "TAPSTREAM_WORKER__EMPLOYEE_SYNC_S": "1",
    "TAPSTREAM_WORKER__REMATCH_INTERVAL_S": "1",
    "TAPSTREAM_TIMESHEETS__DAY_START": DAY_START.isoformat(),
}


def add_employees(dsn: str, employees: dict[str, str]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO employees (attendance_code, employee_id, name) VALUES (%s, %s, %s)",
                        [(code, eid, f"Employee {code}") for code, eid in employees.items()])


def records(dsn: str) -> dict[object, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT event_id, employee_id FROM attendance_records").fetchall())


def timesheets(dsn: str) -> dict[tuple[str, date], ExpectedDay]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT employee_id, work_day, timezone, first_in, last_out, worked_seconds, punches, pairs, flags"
            " FROM timesheets"
        ).fetchall()
    return {(r[0], r[1]): ExpectedDay(r[2], r[3], r[4], r[5], r[6], r[7], tuple(r[8])) for r in rows}


def test_generated_scenario_gives_exactly_the_planned_records_and_timesheets(
    make_pipeline: Callable[..., Pipeline], private_postgres: Callable[[], PostgresServer]
) -> None:
    scenario: Scenario = generate()
    server = private_postgres()
    dsn = server.dsn
    with psycopg.connect(dsn) as conn:
        migrate_postgres(conn)
    add_employees(dsn, scenario.known_at_start)
    pipeline = make_pipeline(dsn, **FAST)
    worker = pipeline.start_worker()
    wait_for(lambda: len(read_topic(pipeline.bootstrap, pipeline.employees)) == len(scenario.known_at_start),
             30, "HR's employees published by the worker", worker)

    produce(pipeline.bootstrap, pipeline.raw, scenario.before_outage)
    first = {p.event_id for p in scenario.before_outage if p.event_id in scenario.records
             and p.user_code not in LATE_MAPPED}
    wait_for(lambda: pg_count(dsn) == len(first), 60, "the first days recorded", worker)

    server.stop()  # Postgres goes away in the middle of the week
    produce(pipeline.bootstrap, pipeline.raw, scenario.during_outage)
    wait_for(lambda: worker_stats(pipeline.stats_file, worker.pid).get("last_sink_error", {}).get("postgres"),
             60, "the worker to report the outage", worker)
    server.start()

    produce(pipeline.bootstrap, pipeline.raw, scenario.after_outage)
    add_employees(dsn, {c: scenario.employees[c] for c in LATE_MAPPED})  # HR maps the unknown badges
    wait_for(lambda: pg_count(dsn) == len(scenario.records), 120, "every planned punch recorded", worker)
    wait_for(lambda: pg_count(dsn, "SELECT count(*) FROM unmatched_punches WHERE resolved_at IS NULL") == 0,
             30, "no parked punch left open", worker)
    wait_for(lambda: pg_count(dsn, "SELECT count(*) FROM quarantine") == len(scenario.clock_resets),
             30, "the clock resets quarantined in Postgres", worker)
    assert worker.stop() == 0

    assert records(dsn) == scenario.records
    assert timesheets(dsn) == scenario.timesheets
    with psycopg.connect(dsn) as conn:
        reasons = conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason").fetchall()
        parked = conn.execute("SELECT DISTINCT user_code FROM unmatched_punches").fetchall()
    assert reasons == [("implausible_time", len(scenario.clock_resets))]
    assert {code for (code,) in parked} == set(LATE_MAPPED)
    assert clickhouse_counts(pipeline)["final"] == len(scenario.records)
