"""`tapstream bench pipeline`: how fast the worker carries N raw punches into both sinks.

One run, isolated from the demo's data and from any other run:

1. fresh topics (``<name>.<run>``: raw with the configured partitions, employees compacted),
   a fresh worker app id (= consumer group, prefix of Faust's own topics), a fresh PostgreSQL
   schema (created and migrated here), its own state folder under ``<state>/bench/<run>``
   (so a fresh embedded ClickHouse store and table store);
2. E employees, then N messages from D devices, pre-loaded with confluent-kafka
   (infra.bench_events makes the workload): distinct punches of known badges, and unless
   ``--no-mix`` about 3% re-sends, 1% unknown badges and 0.2% clocks reset to 2000;
3. ``tapstream worker --exit-when-idle S`` as a subprocess (under infra.bench_profile with
   ``--profile``), timed from spawn to exit; the worker's stats file gives its own span from
   the first consumed event to the last flush;
4. once the worker has exited: row counts in the schema and in ClickHouse (``count() FINAL``)
   and the worker's own counts (consumed, duplicates, unmatched, quarantined), compared with
   what the workload must give (infra.bench_events.counts_match); the ledger's
   ``unmatched_punches`` and ``quarantine`` rows are reported beside them. Then everything the
   run created is removed (``--keep`` leaves it).

The figures come back as one dict (infra.bench_events.result_line); progress goes to ``say``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra import bench_env
from infra.bench_events import (
    NO_MIX, Expected, Mix, bench_devices, bench_employees, bench_workload, counts_match, rate, result_line,
    time_breakdown, worker_counts, worker_rate, worker_span,
)
from infra.bench_profile import threads_path
from infra.bench_run import (
    BenchOptions, BenchRun, Say, check_services, cleanup, clickhouse_count, plan_run, postgres_counts, prepare,
    produce,
)
from infra.employees import publish_employees
from streams.stats import read_stats
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class WorkerOutcome:
    stats: dict[str, Any]
    wall_s: float
    spawned_at: float
    returncode: int | None
    cpu_s: float
    breakdown: dict[str, float]
    profiles: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Loaded:
    """What was put on the raw topic: its load rate (events/s) and what it must give."""

    rate: float | None
    mix: Mix
    expected: Expected


@dataclass(frozen=True)
class Counted:
    """What the run's sinks hold once the worker has exited."""

    postgres: dict[str, int]  # rows per table of infra.bench_run.COUNTED_TABLES
    clickhouse_rows: int


def run_pipeline_bench(settings: Settings, options: BenchOptions, say: Say) -> dict[str, Any]:
    """Run one isolated pipeline benchmark; the result line (see infra.bench_events.RESULT_KEYS)."""
    check_services(settings)
    machine, versions = bench_env.machine(), bench_env.client_versions()
    run = plan_run(settings, options)
    say(f"bench {run.run_id}: {options.events} events{'' if options.mix else ' (no mix)'}, {options.devices} devices, "
        f"{options.employees} employees, batch_max {run.settings.worker.batch_max}; {bench_env.machine_line(machine)}")
    try:
        prepare(run, say)
        loaded = load_events(run, options, say)
        outcome = run_worker(run, options, say)
        if not outcome.stats.get("first_event_at"):
            raise TapstreamError(
                f"the bench worker consumed nothing (exit {outcome.returncode}); see {run.folder / 'worker.log'}. "
                "'Topic ...-changelog not found in cluster metadata' there is Faust's first-start race "
                "with the fresh changelog topics of a new app id: run the bench again"
            )
        postgres, pg_version = postgres_counts(run)
        clickhouse_rows, ch_version = clickhouse_count(run)
    finally:
        if not options.keep:
            cleanup(run, say)
    versions.update({"kafka_broker": _broker_version(settings), "postgres_server": pg_version,
                     "clickhouse_engine": ch_version})
    counted = Counted(postgres, clickhouse_rows)
    match = counts_match(options.events, loaded.expected, worker_counts(outcome.stats),
                         postgres["attendance_records"], clickhouse_rows)
    _report(options, loaded, outcome, counted, match, say)
    return _result(run, options, loaded, outcome, counted, match, machine, versions)


def _broker_version(settings: Settings) -> str:
    return settings.kafka.version if settings.kafka.managed else f"external ({settings.kafka.bootstrap})"


def load_events(run: BenchRun, options: BenchOptions, say: Say) -> Loaded:
    """Publish the employees, then the workload's messages; what was loaded, and how fast."""
    s = run.settings
    employees = bench_employees(options.employees)
    publish_employees(s.kafka.bootstrap, s.topics.employees, employees)
    started = time.perf_counter()
    mix = Mix() if options.mix else NO_MIX
    workload = bench_workload(options.events, bench_devices(options.devices), [e.attendance_code for e in employees],
                              mix=mix, seed=options.seed)
    generated = time.perf_counter()
    e = workload.expected
    say(f"  generated {len(workload.messages)} messages in {generated - started:.1f}s: {e.records} records, "
        f"{e.duplicates} re-sends, {e.unmatched} unknown badges, {e.quarantined} reset clocks")
    produce(s.kafka.bootstrap, s.topics.raw, workload.messages)
    seconds = time.perf_counter() - generated
    load_rate = rate(len(workload.messages), seconds)
    say(f"  loaded {len(workload.messages)} messages into {s.topics.raw} in {seconds:.1f}s ({load_rate} events/s)")
    return Loaded(load_rate, mix, workload.expected)


def _worker_command(run: BenchRun, options: BenchOptions) -> list[str]:
    args = ["worker", "--exit-when-idle", str(options.idle_s)]
    if options.profile:
        return [sys.executable, "-m", "infra.bench_profile", str(run.profile_path), *args]
    return [sys.executable, "-m", "tapstream", *args]


def run_worker(run: BenchRun, options: BenchOptions, say: Say) -> WorkerOutcome:
    """Run the worker until it exits idle (or the timeout); its stats and wall time."""
    log_path = run.folder / "worker.log"
    say(f"  worker: {' '.join(_worker_command(run, options)[1:])} (log {log_path})")
    stats_file = run.settings.path("worker", "stats.json")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_path.open("wb") as log:
        spawned_at, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(_worker_command(run, options), stdout=log, stderr=subprocess.STDOUT,
                                env=run.worker_env(dict(os.environ)))
        try:
            _watch(proc, stats_file, options, say)
        finally:
            _stop(proc)
        wall = time.perf_counter() - started
    # Counted once the child is reaped (_stop waits for it): user + system CPU of the worker.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats = read_stats(stats_file) or {}
    if stats.get("pid") != proc.pid:
        stats = {}
    profiles = [run.profile_path, threads_path(run.profile_path)] if options.profile else []
    breakdown = time_breakdown(log_path.read_text(encoding="utf-8", errors="replace"))
    return WorkerOutcome(stats, wall, spawned_at, proc.returncode, cpu, breakdown, profiles)


def _watch(proc: subprocess.Popen[bytes], stats_file: Path, options: BenchOptions, say: Say) -> None:
    """Report progress every 5 s; return when the worker exits, stalls at start, or times out."""
    started = time.monotonic()
    next_report = started + 5
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > options.timeout_s:
            say(f"  worker still running after {options.timeout_s:.0f}s: stopping it")
            return
        if time.monotonic() >= next_report:
            next_report += 5
            stats = read_stats(stats_file) or {}
            stats = stats if stats.get("pid") == proc.pid else {}
            if not stats.get("first_event_at") and elapsed > options.start_timeout_s:
                say(f"  worker consumed nothing within {options.start_timeout_s:.0f}s of starting: stopping it")
                return
            say(f"  ... consumed {stats.get('consumed', 0)}/{options.events}, batches {stats.get('batches', 0)}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _report(
    options: BenchOptions, loaded: Loaded, outcome: WorkerOutcome, counted: Counted, match: bool, say: Say,
) -> None:
    stats, e = outcome.stats, loaded.expected
    c, pg = worker_counts(stats), counted.postgres
    say(f"  worker: {worker_rate(stats, options.events)} events/s over {worker_span(stats) or 0:.1f}s, "
        f"wall {outcome.wall_s:.1f}s (exit {outcome.returncode}), {stats.get('batches')} batches, "
        f"worker CPU {outcome.cpu_s:.1f}s")
    say(f"  worker counted: consumed {c['consumed']}/{options.events}, duplicates {c['duplicates']}/{e.duplicates}, "
        f"unmatched {c['unmatched']}/{e.unmatched}, quarantined {c['quarantined']}/{e.quarantined}, "
        f"rejected {c['rejected']}")
    say(f"  rows: postgres {pg['attendance_records']}, clickhouse {counted.clickhouse_rows} FINAL, "
        f"expected {e.records}: " + ("counts match" if match else "COUNTS DIFFER"))
    # The ledger projects asynchronously and stops with the worker: reported, not judged.
    say(f"  ledger rows (informational): unmatched_punches {pg['unmatched_punches']}/{e.unmatched}, "
        f"quarantine {pg['quarantine']}/{e.quarantined}")
    if outcome.profiles:
        say(bench_env.profile_summary(outcome.profiles))


def _result(
    run: BenchRun, options: BenchOptions, loaded: Loaded, outcome: WorkerOutcome, counted: Counted, match: bool,
    machine: dict[str, Any], versions: dict[str, Any],
) -> dict[str, Any]:
    stats, w, pg = outcome.stats, run.settings.worker, counted.postgres
    first = stats.get("first_event_at")
    return result_line(
        events=options.events, devices=options.devices, employees=options.employees,
        mix=asdict(loaded.mix),
        load_events_per_s=loaded.rate, worker_events_per_s=worker_rate(stats, options.events),
        wall_s=round(outcome.wall_s, 2), worker_s=_round(worker_span(stats)), worker_cpu_s=round(outcome.cpu_s, 2),
        startup_s=_round(first - outcome.spawned_at if first else None),
        postgres_rows=pg["attendance_records"], clickhouse_rows=counted.clickhouse_rows,
        expected=loaded.expected.as_dict(), worker_counts=worker_counts(stats), counts_match=match,
        postgres_unmatched_rows=pg["unmatched_punches"], postgres_quarantine_rows=pg["quarantine"],
        batches=stats.get("batches"), breakdown=outcome.breakdown,
        settings={"batch_max": w.batch_max, "batch_within_s": w.batch_within_s,
                  "fetch_max_wait_ms": w.fetch_max_wait_ms, "store": w.store,
                  "raw_partitions": run.settings.topics.raw_partitions, "idle_exit_s": options.idle_s},
        machine=machine, versions=versions,
        profile=[str(p) for p in outcome.profiles] or None, run_id=run.run_id,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
