"""`tapstream bench live`: tap -> SSE delivered and tap -> PostgreSQL row, under a steady load.

One isolated run (infra.bench_live_run: own topics including the live feed, schema, worker app
id, state folder; removed afterwards):

1. E employees are published and D push devices registered in the run's schema; the worker,
   `tapstream push` (a free port) and `tapstream monitor` (a free port) start as subprocesses;
   a warm-up punch is posted until it comes out of /events, so the whole path is up;
2. C SSE readers (infra.bench_live_sse, in a few processes) connect before the load;
3. R taps a second for T seconds (infra.bench_live_plan.tap_schedule), each device POSTing
   the taps of its last upload interval as ATTLOG lines (infra.bench_live_load);
4. each reader counts, per planned punch, arrival time - tap time; the run waits until every
   reader has every punch (or the drain time is over); then each planned punch's
   ``attendance_records.ingested_at`` (the database clock, same machine) - tap time.

With ``--slow-clients N`` the N slow readers are connected during the latency run too, and
infra.bench_live_compare measures the worker's saturated throughput with 0 and N of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg

from infra import bench_env
from infra.bench_events import bench_employees
from infra.bench_live_compare import compare_throughput
from infra.bench_live_load import Played, handshake, lag_figures, play, post_one
from infra.bench_live_plan import (
    STAGES, LiveOptions, Tap, check_plan, device_serials, histogram, merge, percentiles, result_line, slow_summary, tap_schedule,
    uploads,
)
from infra.bench_live_run import (
    CpuWindow, LiveRun, Readers, monitor_sse, plan_live_run, start_monitor, write_plan,
)
from infra.bench_run import Say, check_services, cleanup, prepare
from infra.employees import publish_employees
from infra.harness import TapstreamProcess, free_port, wait_http
from monitor.sse_reader import SseParser
from producers.registry import add_device
from tapstream.errors import TapstreamError
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

WARM_UP_S = 180.0


@dataclass(frozen=True)
class Measured:
    played: Played
    readers: list[dict[str, Any]]
    postgres: dict[str, Any]
    sse: dict[str, float]  # the monitor's SSE counters at the end (infra.bench_live_run.monitor_sse)
    cpu: dict[str, float]  # percent of one core per process during the load (infra.bench_live_run.CpuWindow)


def run_live_bench(settings: Settings, options: LiveOptions, say: Say) -> dict[str, Any]:
    """Run the latency benchmark (and the slow-client comparison); the result line."""
    check_services(settings)
    check_plan(options)
    machine, versions = bench_env.machine(), bench_env.client_versions()
    run = plan_live_run(settings, options)
    say(f"bench live {run.run_id}: {options.rate:g} taps/s for {options.duration_s:g}s from {options.devices} "
        f"devices, {options.clients} SSE clients + {options.slow_clients} slow; {bench_env.machine_line(machine)}")
    try:
        measured = _measure(run, options, say)
    finally:
        if not options.keep:
            cleanup(run, say)
    throughput = None
    if options.slow_clients and options.compare_events:
        throughput = compare_throughput(settings, options, say)
    versions.update({"aiohttp": aiohttp.__version__, "postgres_server": measured.postgres.pop("server")})
    return _result(run, options, measured, throughput, machine, versions)


def _measure(run: LiveRun, options: LiveOptions, say: Say) -> Measured:
    procs: list[TapstreamProcess] = []
    readers: Readers | None = None
    try:
        prepare(run, say)
        codes = _enrol(run, options)
        push_url = _start_pipeline(run, procs, say)
        serials = device_serials(options.devices)
        asyncio.run(handshake(push_url, serials))
        tries = asyncio.run(_warm_up(push_url, run.monitor_url, serials[0], codes[0]))
        say(f"  warm-up punch came out of /events after {tries} tries")
        count = int(options.rate * options.duration_s)
        readers = Readers(run, clients=options.clients, slow=options.slow_clients, procs=options.client_procs,
                          planned=count)
        readers.wait_ready()
        say(f"  {options.clients} + {options.slow_clients} slow SSE clients connected")
        start = time.time() + 1.0
        taps = tap_schedule(options, start, codes)
        write_plan(run.folder / "plan.json", taps)
        readers.send(f"plan {run.folder / 'plan.json'} {start + options.duration_s + options.drain_s}")
        cpu = CpuWindow({"worker": [procs[0].pid], "push": [procs[1].pid], "monitor": [procs[2].pid],
                         "readers": [c.pid for c in readers.children], "generator": [os.getpid()]})
        played = asyncio.run(play(push_url, uploads(taps, options, start), start))
        usage = cpu.end()
        say(f"  posted {played.acked}/{len(taps)} punches in {played.span_s:.1f}s ({played.failed} uploads failed); "
            f"CPU during the load: {usage}")
        results = readers.results()
        sse = monitor_sse(run)
        say(f"  readers done; the monitor says {sse}")
        pg = _postgres_latency(run, taps, options.drain_s)
        return Measured(played, results, pg, sse, usage)
    finally:
        if readers is not None:
            readers.close()
        for proc in reversed(procs):
            proc.stop()


def _enrol(run: LiveRun, options: LiveOptions) -> list[str]:
    """Publish the employees and register the push devices; the badge codes."""
    s = run.settings
    employees = bench_employees(options.employees)
    publish_employees(s.kafka.bootstrap, s.topics.employees, employees)
    with psycopg.connect(run.dsn) as conn:
        for serial in device_serials(options.devices):
            add_device(conn, serial=serial, kind="push", timezone="UTC", name=serial, site="bench")
    return [e.attendance_code for e in employees]


def _start_pipeline(run: LiveRun, procs: list[TapstreamProcess], say: Say) -> str:
    """Worker, push endpoint and monitor on the run's names; the push endpoint's URL."""
    env = run.worker_env(dict(os.environ))
    procs.append(TapstreamProcess(["worker"], run.folder / "worker.log", env=env))
    port = free_port()
    procs.append(TapstreamProcess(["push", "--host", "127.0.0.1", "--port", str(port)], run.folder / "push.log",
                                  env=env))
    push_url = f"http://127.0.0.1:{port}"
    wait_http(push_url + "/healthz", 60)
    start_monitor(run, procs)
    say(f"  worker, push {push_url} and monitor {run.monitor_url} started (logs in {run.folder})")
    return push_url


async def _warm_up(push_url: str, monitor_url: str, serial: str, code: str) -> int:
    """Post a punch every few seconds until one comes out of /events; how many were posted."""
    deadline = time.monotonic() + WARM_UP_S
    async with aiohttp.ClientSession() as session, session.get(monitor_url + "/events") as stream:
        parser, tries = SseParser(), 0
        while time.monotonic() < deadline:
            tap = Tap(time.time(), serial, code, 0, "")
            tries += 1
            await post_one(session, push_url, serial, (tap.attlog_line() + "\n").encode(), 1)
            window = time.monotonic() + 3.0
            while (left := window - time.monotonic()) > 0:
                try:
                    chunk = await asyncio.wait_for(stream.content.readany(), left)
                except TimeoutError:
                    break
                if any(e.type == "punch" for e in parser.feed(chunk)):
                    return tries
    raise TapstreamError(f"no punch came out of /events within {WARM_UP_S:.0f}s; see worker.log and monitor.log")


def _postgres_latency(run: LiveRun, taps: list[Tap], wait_s: float) -> dict[str, Any]:
    """ingested_at - tap time of every planned punch (waiting up to ``wait_s`` for the last rows)."""
    at = {t.event_id: t.at for t in taps}
    deadline = time.monotonic() + wait_s
    with psycopg.connect(run.dsn) as conn:
        while True:
            rows = conn.execute("SELECT event_id::text, extract(epoch FROM ingested_at)::float8 "
                                "FROM attendance_records").fetchall()
            conn.commit()
            found = {e: float(i) for e, i in rows if e in at}
            if len(found) >= len(at) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        version = conn.execute("SHOW server_version").fetchone()
    hist = histogram((found[e] - at[e]) * 1000 for e in found)
    return {"rows": len(found), "missing": len(at) - len(found), "latency": percentiles(hist),
            "server": str(version[0]) if version else "?"}


def _result(run: LiveRun, options: LiveOptions, measured: Measured, throughput: dict[str, Any] | None,
            machine: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    clients = [c for r in measured.readers for c in r.get("clients", [])]
    played, pg, w = measured.played, measured.postgres, run.settings.worker
    return result_line(
        bench="live", rate=options.rate, duration_s=options.duration_s, devices=options.devices,
        employees=options.employees, upload_interval_s=options.upload_interval_s, clients=options.clients,
        slow_clients=options.slow_clients, punches=int(options.rate * options.duration_s),
        rate_achieved=round(played.acked / played.span_s, 1) if played.span_s > 0 else None,
        uploads_failed=played.failed, upload_lag_ms=lag_figures(played),
        tap_to_sse_ms=percentiles(merge(r.get("hist", {}) for r in measured.readers)),
        tap_to_postgres_ms=pg["latency"], postgres_rows=pg["rows"],
        stages_ms={name: percentiles(merge(r.get("stages", {}).get(name, {}) for r in measured.readers))
                   for name in STAGES},
        missing_per_client={str(k): v for k, v in sorted(Counter(c["missing"] for c in clients).items())},
        duplicates=sum(c["duplicates"] for c in clients),
        clients_behind=sum(1 for c in clients if c["behind"]),
        slow_readers=slow_summary(measured.readers) if options.slow_clients else None,
        monitor_sse=measured.sse, throughput=throughput, cpu_pct=measured.cpu,
        settings={"batch_max": w.batch_max, "batch_within_s": w.batch_within_s, "fetch_max_wait_ms": w.fetch_max_wait_ms,
                  "client_buffer": run.settings.monitor.client_buffer, "client_procs": options.client_procs,
                  "raw_partitions": run.settings.topics.raw_partitions},
        machine=machine, versions=versions, run_id=run.run_id,
    )


def passed(result: dict[str, Any]) -> bool:
    """Every client got every punch, every upload was acknowledged, every row is in PostgreSQL."""
    return (set(result["missing_per_client"]) <= {"0"} and result["uploads_failed"] == 0
            and result["postgres_rows"] == result["punches"])
