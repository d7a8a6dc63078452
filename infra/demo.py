"""`tapstream demo`: the whole pipeline on the embedded default, checked against expectations.

Brings the stack up, registers three push devices, imports an HR list, starts the worker, the
live monitor (an SSE client counts what it shows: infra.demo_live) and the ADMS endpoint as
real processes, plays a simulated morning (infra.simulate), then serves two
emulated pull terminals to `tapstream pull` (infra.demo_pull), has HR enrol the unknown badges
(their parked punches are then recorded by the worker itself), waits until everything is
carried through, then reads every store and compares with what the scenario and the terminals
say must be there. Each run simulates an earlier morning, so runs never collide.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from infra import stack
from infra.demo_live import LiveWatcher
from infra.demo_pull import play_pull
from infra.employee_sync import sync_employees
from infra.employees import import_employees
from infra.harness import (
    TapstreamProcess, free_port, group_lag, topic_ends, wait_drained, wait_http, wait_worker, worker_stats,
)
from infra.reports import format_table, run_report
from infra.simulate import Expected, SimDevice, morning, post_scenario
from producers.registry import add_device
from sinks.clickhouse import open_client
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

DEVICES = [
    SimDevice("DEMO-HQ-01", "Europe/Berlin", "Headquarters"),
    SimDevice("DEMO-DHK-02", "Asia/Dhaka", "Dhaka plant"),
    SimDevice("DEMO-NYC-03", "America/New_York", "New York shop"),
    SimDevice("DEMO-ROGUE-99", "UTC", "nobody registered it", registered=False),
]
KNOWN = [str(1001 + i) for i in range(40)]
UNKNOWN = ["9001", "9002"]


@dataclass
class Observed:
    accepted: int
    raw: int
    dlq: int
    unmatched_topic: int
    duplicates: int
    unmatched: int
    postgres: int
    clickhouse: int
    pull_postgres: int
    pull_clickhouse: int
    live: int = 0


def run_demo(settings: Settings, say: Any = print) -> bool:
    """Run the demo; print the comparison; True when every count matches."""
    say("stack: " + stack.up(settings).to_text().splitlines()[0])
    day, seed = _next_morning(settings)
    _register(settings)
    csv_path = _employees_csv(settings)
    import_employees(csv_path, dsn=settings.postgres.effective_dsn(), bootstrap=settings.kafka.bootstrap, topic=settings.topics.employees)
    scenario = morning(DEVICES, KNOWN, UNKNOWN, day, seed)
    port = free_port()
    logs = settings.path("demo")
    stats_file = settings.path("worker", "stats.json")
    # HR's edits reach the worker in seconds rather than the default 30 s, for the late enrolment below.
    worker_env = {**os.environ, "TAPSTREAM_WORKER__EMPLOYEE_SYNC_S": "2"}
    with TapstreamProcess(["worker"], logs / "worker.log", env=worker_env) as worker:
        # Leftovers of an interrupted run are carried through first, so they do not count here.
        _wait_caught_up(settings, worker, 120)
        offsets, baseline, since = _topic_ends(settings), worker_stats(stats_file, worker.pid), datetime.now(UTC)
        with LiveWatcher(logs) as live:
            say(f"live monitor {live.url}/ (SSE {live.url}/events): counting the punches it shows")
            with TapstreamProcess(["push", "--host", "127.0.0.1", "--port", str(port)], logs / "push.log"):
                base = f"http://127.0.0.1:{port}"
                wait_http(base + "/healthz", 60)
                say(f"push endpoint {base}: playing the morning of {day} from {len(DEVICES)} devices")
                replies = post_scenario(base, scenario)
                wait_drained(base, 60)
            final = wait_worker(stats_file, worker, baseline.get("consumed", 0) + scenario.expected.raw_messages, 120)
            after_push = _topic_ends(settings)
            pulled = play_pull(settings, logs, say)
            wait_worker(stats_file, worker, final.get("consumed", 0) + len(pulled.event_ids), 120)
            enrolled = _enrol_late(settings, worker, since, scenario.expected.unmatched, say)
            shown = live.wait_for(scenario.expected.unique_punches + len(pulled.event_ids), 30)
            if live.error:
                say(f"live monitor: {live.error} (see {logs / 'monitor.log'})")
    _forget_late(settings)  # so the next run parks them again
    # After the worker has stopped: the embedded ClickHouse store is free to open.
    observed = _observe(settings, offsets, after_push, baseline, final, since, replies, pulled.serials)
    observed.live = shown
    ok = _report(scenario.expected, len(pulled.event_ids), observed, enrolled, day, say)
    _presence(settings, day, say)
    return ok


def _late_rows(settings: Settings, since: datetime) -> int:
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM attendance_records WHERE user_code = ANY(%s) AND received_at >= %s",
                           (UNKNOWN, since)).fetchone()
    return int(row[0]) if row else 0


def _enrol_late(settings: Settings, worker: TapstreamProcess, since: datetime, parked: int, say: Any) -> int:
    """HR enrols the unknown badges in Postgres; the worker records their parked punches by itself."""
    say(f"HR enrols badges {', '.join(UNKNOWN)} in PostgreSQL employees; waiting for their parked punches")
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        conn.cursor().executemany(
            "INSERT INTO employees (attendance_code, employee_id, name) VALUES (%s, %s, %s)"
            " ON CONFLICT (attendance_code) DO UPDATE SET employee_id = EXCLUDED.employee_id, active = true",
            [(code, f"E-{code}", f"Late hire {code}") for code in UNKNOWN])
    deadline = time.monotonic() + 90
    while (found := _late_rows(settings, since)) < parked and time.monotonic() < deadline and worker.alive():
        time.sleep(0.5)
    return found


def _forget_late(settings: Settings) -> None:
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        conn.execute("DELETE FROM employees WHERE attendance_code = ANY(%s)", (UNKNOWN,))
    sync_employees(settings.postgres.effective_dsn(), settings.kafka.bootstrap, settings.topics.employees)


def _presence(settings: Settings, day: date, say: Any) -> None:
    client = open_client(settings.clickhouse_dsn(), settings.clickhouse.database)
    try:
        result = run_report(client, settings.clickhouse.database, "daily-presence", day, day + timedelta(days=1),
                            settings.analytics)
    finally:
        client.close()
    say(f"\n$ tapstream report daily-presence --from {day} --to {day + timedelta(days=1)}\n{format_table(result)}")


def _next_morning(settings: Settings) -> tuple[date, int]:
    counter = settings.path("demo", "runs")
    counter.parent.mkdir(parents=True, exist_ok=True)
    runs = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(runs + 1))
    return datetime.now(UTC).date() - timedelta(days=runs), runs


def _register(settings: Settings) -> None:
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        for d in DEVICES:
            if d.registered:
                add_device(conn, serial=d.serial, kind="push", timezone=d.timezone, name=d.serial, site=d.site)


def _employees_csv(settings: Settings) -> Path:
    path = settings.path("demo", "employees.csv")
    rows = ["attendance_code,employee_id,name,department"]
    rows += [f"{code},E-{code},Employee {code},{('Sales', 'Plant', 'Office')[i % 3]}" for i, code in enumerate(KNOWN)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _wait_caught_up(settings: Settings, worker: TapstreamProcess, timeout_s: float) -> None:
    """Wait until the worker group has committed every raw message there is."""
    deadline = time.monotonic() + timeout_s
    stats_file = settings.path("worker", "stats.json")

    def behind() -> bool:
        if not worker_stats(stats_file, worker.pid):
            return True  # not started yet
        return group_lag(settings.kafka.bootstrap, settings.worker.app_id, settings.topics.raw) > 0

    while behind():
        if not worker.alive():
            raise TapstreamError(f"the worker exited ({worker.proc.returncode}); see {worker.log}")
        if time.monotonic() > deadline:
            raise TapstreamError(f"the worker did not catch up with {settings.topics.raw} within {timeout_s:.0f}s")
        time.sleep(0.5)


def _topic_ends(settings: Settings) -> dict[str, int]:
    return topic_ends(settings.kafka.bootstrap, (settings.topics.raw, settings.topics.dlq, settings.topics.unmatched))


def _observe(
    settings: Settings, before: dict[str, int], after: dict[str, int], baseline: dict[str, Any],
    stats: dict[str, Any], since: datetime, replies: list[str], pull_serials: list[str],
) -> Observed:
    push_rows = _rows(settings, [d.serial for d in DEVICES], since)
    pull_rows = _rows(settings, pull_serials, since)
    return Observed(
        accepted=sum(int(r.split(":")[1]) for r in replies if r.startswith("OK:")),
        raw=after[settings.topics.raw] - before[settings.topics.raw],
        dlq=after[settings.topics.dlq] - before[settings.topics.dlq],
        unmatched_topic=after[settings.topics.unmatched] - before[settings.topics.unmatched],
        duplicates=int(stats.get("duplicates", 0)) - int(baseline.get("duplicates", 0)),
        unmatched=int(stats.get("unmatched", 0)) - int(baseline.get("unmatched", 0)),
        postgres=push_rows[0],
        clickhouse=push_rows[1],
        pull_postgres=pull_rows[0],
        pull_clickhouse=pull_rows[1],
    )


def _rows(settings: Settings, serials: list[str], since: datetime) -> tuple[int, int]:
    """Rows of these devices received since ``since``: (PostgreSQL, ClickHouse FINAL)."""
    with psycopg.connect(settings.postgres.effective_dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FROM attendance_records WHERE device_serial = ANY(%s) AND received_at >= %s", (serials, since)
        ).fetchone()
    client = open_client(settings.clickhouse_dsn(), settings.clickhouse.database)
    try:
        ch = client.command(
            f"SELECT count() FROM {settings.clickhouse.database}.attendance_events FINAL"
            " WHERE has({serials:Array(String)}, device_serial) AND received_at >= {since:DateTime64(6)}",
            parameters={"serials": serials, "since": since},
        )
    finally:
        client.close()
    return (int(row[0]) if row else 0), int(str(ch))


def _report(exp: Expected, pulled: int, obs: Observed, enrolled: int, day: date, say: Any) -> bool:
    lines_sent = exp.raw_messages + exp.quarantined
    checks = [
        ("ADMS lines acknowledged to devices (OK: n)", lines_sent, obs.accepted),
        ("punches published to attendance.raw", exp.raw_messages, obs.raw),
        ("bad lines + unknown-device lines -> attendance.dlq", exp.quarantined, obs.dlq),
        ("duplicates dropped by the stream (re-sent batches)", exp.resent_lines, obs.duplicates),
        ("unknown badges parked -> attendance.unmatched", exp.unmatched, obs.unmatched_topic),
        ("...of which counted by the worker", exp.unmatched, obs.unmatched),
        ("...recorded by themselves once HR enrolled them", exp.unmatched, enrolled),
        # every distinct punch of a registered device, the late-enrolled badges' included
        ("PostgreSQL attendance_records (new rows)", exp.unique_punches, obs.postgres),
        ("ClickHouse attendance_events FINAL (new rows)", exp.unique_punches, obs.clickhouse),
        ("pull devices: punches recorded -> PostgreSQL rows", pulled, obs.pull_postgres),
        ("pull devices: punches recorded -> ClickHouse FINAL", pulled, obs.pull_clickhouse),
        # every recorded punch, push and pull, reaches a browser watching the monitor
        ("punches shown live on the monitor's /events (SSE)", exp.unique_punches + pulled, obs.live),
    ]
    say(f"\nTapstream demo - the morning of {day}")
    say(f"{'':52} {'expected':>9} {'observed':>9}")
    ok = True
    for label, expected, observed in checks:
        mark = "ok" if expected == observed else "MISMATCH"
        ok &= expected == observed
        say(f"{label:52} {expected:>9} {observed:>9}  {mark}")
    say("\nevery count matches: nothing lost, nothing doubled" if ok else "\nsome counts differ (see above)")
    return ok
