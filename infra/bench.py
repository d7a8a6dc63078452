"""`tapstream bench pipeline`: how fast the worker carries N raw punches into both sinks.

One run, isolated from the demo's data and from any other run:

1. fresh topics (``<name>.<run>``: raw with the configured partitions, employees compacted),
   a fresh worker app id (= consumer group, prefix of Faust's own topics), a fresh PostgreSQL
   schema (created and migrated here), its own state folder under ``<state>/bench/<run>``
   (so a fresh embedded ClickHouse store and table store);
2. E employees, then N distinct punches from D devices, pre-loaded with confluent-kafka
   (infra.bench_events makes the workload);
3. ``tapstream worker --exit-when-idle S`` as a subprocess (under infra.bench_profile with
   ``--profile``), timed from spawn to exit; the worker's stats file gives its own span from
   the first consumed event to the last flush;
4. once the worker has exited: row counts in the schema and in ClickHouse (``count() FINAL``),
   compared with N; then everything the run created is removed (``--keep`` leaves it).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import bench_env
from infra.bench_events import (
    bench_devices, bench_employees, encoded_messages, generate_punches, rate, result_line, time_breakdown,
    worker_rate, worker_span,
)
from infra.bench_profile import threads_path
from infra.bench_run import (
    BenchOptions, BenchRun, Say, check_services, cleanup, clickhouse_count, plan_run, postgres_count, prepare,
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


def run_pipeline_bench(settings: Settings, options: BenchOptions, say: Say) -> dict[str, Any]:
    """Run one isolated pipeline benchmark; the result line (see infra.bench_events.RESULT_KEYS)."""
    check_services(settings)
    machine, versions = bench_env.machine(), bench_env.client_versions()
    run = plan_run(settings, options)
    say(f"bench {run.run_id}: {options.events} events, {options.devices} devices, {options.employees} employees, "
        f"batch_max {run.settings.worker.batch_max}; {bench_env.machine_line(machine)}")
    try:
        prepare(run, say)
        load_rate = _load(run, options, say)
        outcome = _run_worker(run, options, say)
        if not outcome.stats.get("first_event_at"):
            raise TapstreamError(
                f"the bench worker consumed nothing (exit {outcome.returncode}); see {run.folder / 'worker.log'}. "
                "'Topic ...-changelog not found in cluster metadata' there is Faust's first-start race "
                "with the fresh changelog topics of a new app id: run the bench again"
            )
        postgres_rows, pg_version = postgres_count(run)
        clickhouse_rows, ch_version = clickhouse_count(run)
    finally:
        if not options.keep:
            cleanup(run, say)
    versions.update({"kafka_broker": _broker_version(settings), "postgres_server": pg_version,
                     "clickhouse_engine": ch_version})
    return _result(run, options, load_rate, outcome, postgres_rows, clickhouse_rows, machine, versions, say)


def _broker_version(settings: Settings) -> str:
    return settings.kafka.version if settings.kafka.managed else f"external ({settings.kafka.bootstrap})"


def _load(run: BenchRun, options: BenchOptions, say: Say) -> float | None:
    """Publish the employees, then the punches; the punches' load rate (events/s)."""
    s = run.settings
    employees = bench_employees(options.employees)
    publish_employees(s.kafka.bootstrap, s.topics.employees, employees)
    started = time.perf_counter()
    codes = [e.attendance_code for e in employees]
    messages = encoded_messages(generate_punches(options.events, bench_devices(options.devices), codes, seed=options.seed))
    generated = time.perf_counter()
    say(f"  generated {len(messages)} punches in {generated - started:.1f}s")
    produce(s.kafka.bootstrap, s.topics.raw, messages)
    seconds = time.perf_counter() - generated
    load_rate = rate(len(messages), seconds)
    say(f"  loaded {len(messages)} punches into {s.topics.raw} in {seconds:.1f}s ({load_rate} events/s)")
    return load_rate


def _worker_command(run: BenchRun, options: BenchOptions) -> list[str]:
    args = ["worker", "--exit-when-idle", str(options.idle_s)]
    if options.profile:
        return [sys.executable, "-m", "infra.bench_profile", str(run.profile_path), *args]
    return [sys.executable, "-m", "tapstream", *args]


def _run_worker(run: BenchRun, options: BenchOptions, say: Say) -> WorkerOutcome:
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


def _result(
    run: BenchRun, options: BenchOptions, load_rate: float | None, outcome: WorkerOutcome,
    postgres_rows: int, clickhouse_rows: int, machine: dict[str, Any], versions: dict[str, Any], say: Say,
) -> dict[str, Any]:
    stats, w = outcome.stats, run.settings.worker
    first = stats.get("first_event_at")
    match = postgres_rows == clickhouse_rows == options.events == stats.get("consumed")
    say(f"  worker: {worker_rate(stats, options.events)} events/s over {worker_span(stats) or 0:.1f}s, "
        f"wall {outcome.wall_s:.1f}s (exit {outcome.returncode}), {stats.get('batches')} batches, "
        f"worker CPU {outcome.cpu_s:.1f}s")
    say(f"  rows: postgres {postgres_rows}, clickhouse {clickhouse_rows} FINAL, expected {options.events}: "
        + ("counts match" if match else "COUNTS DIFFER"))
    if outcome.profiles:
        say(bench_env.profile_summary(outcome.profiles))
    return result_line(
        events=options.events, devices=options.devices, employees=options.employees,
        load_events_per_s=load_rate, worker_events_per_s=worker_rate(stats, options.events),
        wall_s=round(outcome.wall_s, 2), worker_s=_round(worker_span(stats)), worker_cpu_s=round(outcome.cpu_s, 2),
        startup_s=_round(first - outcome.spawned_at if first else None),
        postgres_rows=postgres_rows, clickhouse_rows=clickhouse_rows, counts_match=match,
        batches=stats.get("batches"), breakdown=outcome.breakdown,
        settings={"batch_max": w.batch_max, "batch_within_s": w.batch_within_s, "store": w.store,
                  "raw_partitions": run.settings.topics.raw_partitions, "idle_exit_s": options.idle_s},
        machine=machine, versions=versions,
        profile=[str(p) for p in outcome.profiles] or None, run_id=run.run_id,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
