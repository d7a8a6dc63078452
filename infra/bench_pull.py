"""`tapstream bench pull-fleet` and `tapstream bench pull-log`: the pull producer's figures.

Both run against emulated terminals (`tapstream emulate zk`, a separate process) and a real
broker, in an isolated run (infra.bench_run: own topics, schema and state folder).

* pull-fleet: D devices in one `tapstream pull` process. Once all are live, the emulator
  generates R punches/s per device for T seconds; the producer's CPU and resident memory are
  sampled from /proc meanwhile. After one more catch-up interval, every event id the emulator
  generated is looked up in the raw topic: missed, extra and duplicated counts, how many came
  live and how many by catch-up, and the tap -> attendance.raw latency of the live ones (the
  emulator's record time against the broker's LogAppendTime).
* pull-log: one device with an N-record log; the time to download it through pyzk and parse it,
  and a whole catch-up pass until Kafka confirmed every record (optionally pyzk's own
  get_attendance for comparison).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from datetime import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer

from zk import ZK

from infra import bench_env
from infra.bench_run import BenchOptions, BenchRun, check_services, cleanup, plan_run, prepare
from infra.harness import TapstreamProcess, free_port, pull_devices, wait_http
from infra.topics import TopicSpec, ensure_topics
from producers.publisher import Publisher
from producers.pull.client import PullClient
from producers.pull.device import DeviceWorker
from producers.pull.writer import SpoolWriter
from producers.registry import DeviceInfo
from producers.spool import Spool
from tapstream.errors import TapstreamError
from tapstream.settings import ENV_PREFIX, Settings

Say = Callable[[str], None]


@dataclass(frozen=True)
class FleetOptions:
    """devices x rate_per_s punches per second for duration_s; catchup_s = the producer's catch-up interval."""

    devices: int = 1000
    rate_per_s: float = 0.2
    duration_s: float = 60.0
    users: int = 50
    log_size: int = 20
    catchup_s: float = 60.0
    base_port: int = 30_000
    keep: bool = False


def run_pull_fleet_bench(settings: Settings, options: FleetOptions, say: Say) -> dict[str, Any]:
    """Run the fleet benchmark once; the figures as one dict."""
    check_services(settings)
    run = plan_run(settings, BenchOptions(events=0))
    say(f"bench pull-fleet {run.run_id}: {options.devices} devices x {options.rate_per_s}/s for "
        f"{options.duration_s:.0f}s; {bench_env.machine_line(bench_env.machine())}")
    _raw_with_append_time(run)
    procs: list[TapstreamProcess] = []
    try:
        prepare(run, say)
        control = _start_emulator(run, procs, options.devices, options.base_port, options.users, options.log_size, say)
        _register(run, options.devices, options.base_port)
        pull = _start_pull(run, procs, options.catchup_s, say)
        live_after = _wait_all_live(run, pull, options.devices, say)
        usage = _generate(control, pull.pid, options, say)
        say(f"  waiting {options.catchup_s + 10:.0f}s: one catch-up pass for anything live capture missed")
        time.sleep(options.catchup_s + 10)
        generated = _generated(control, options.devices)
        produced = _read_raw(run, len(generated))
        figures = _compare(generated, produced)
        pull.stop()
    finally:
        for proc in reversed(procs):
            proc.stop()
        if not options.keep:
            cleanup(run, say)
    result = {"bench": "pull-fleet", "devices": options.devices, "rate_per_device_s": options.rate_per_s,
              "duration_s": options.duration_s, "all_live_after_s": round(live_after, 1), **usage, **figures,
              "machine": bench_env.machine(), "versions": bench_env.client_versions(), "run_id": run.run_id}
    say(f"  generated {figures['generated']}, produced {figures['produced_distinct']} distinct: "
        f"missed {figures['missed']}, extra {figures['extra']}, duplicates {figures['duplicates']}; "
        f"live {figures['live']} / catch-up {figures['catch_up']}; live latency p50 {figures['latency_ms']['p50']} ms "
        f"p99 {figures['latency_ms']['p99']} ms (emulator -> producer p99 "
        f"{figures['latency_tap_to_producer_ms']['p99']} ms, producer -> raw p99 "
        f"{figures['latency_producer_to_raw_ms']['p99']} ms); producer CPU {usage['cpu_percent']}% of one core, "
        f"RSS max {usage['rss_mib_max']} MiB")
    return result


def _raw_with_append_time(run: BenchRun) -> None:
    # The broker stamps each record as it appends it: the "arrived in attendance.raw" time.
    t = run.settings.topics
    ensure_topics(run.settings.kafka.bootstrap, [
        TopicSpec(t.raw, t.raw_partitions, {"message.timestamp.type": "LogAppendTime"}),
    ])


def _start_emulator(run: BenchRun, procs: list[TapstreamProcess], devices: int, base_port: int, users: int,
                    log_size: int, say: Say) -> str:
    port = free_port()
    args = ["emulate", "zk", "--devices", str(devices), "--base-port", str(base_port), "--users", str(users),
            "--log-size", str(log_size), "--control-port", str(port), "--serial-prefix", "BENCH"]
    procs.append(TapstreamProcess(args, run.folder / "emulator.log", env=run.worker_env(dict(os.environ))))
    control = f"http://127.0.0.1:{port}"
    wait_http(control + "/devices", 120)
    say(f"  emulator: {devices} devices on ports {base_port}-{base_port + devices - 1}")
    return control


def serial_of(n: int) -> str:
    """The emulator's serial for device n (0-based) with prefix BENCH."""
    return f"BENCH{n + 1:04d}"


def _register(run: BenchRun, devices: int, base_port: int) -> None:
    rows = [(serial_of(n), serial_of(n), "pull", "127.0.0.1", base_port + n, "UTC", "bench") for n in range(devices)]
    with psycopg.connect(run.dsn) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (serial, name, kind, address, port, timezone, site) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )


def _start_pull(run: BenchRun, procs: list[TapstreamProcess], catchup_s: float, say: Say) -> TapstreamProcess:
    env = run.worker_env(dict(os.environ))
    env.update({f"{ENV_PREFIX}PULL__CATCHUP_INTERVAL_S": str(catchup_s),
                f"{ENV_PREFIX}PULL__INFO_REFRESH_S": str(catchup_s)})
    pull = TapstreamProcess(["pull"], run.folder / "pull.log", env=env)
    procs.append(pull)
    say(f"  pull producer pid {pull.pid} (log {run.folder / 'pull.log'})")
    return pull


def _wait_all_live(run: BenchRun, pull: TapstreamProcess, devices: int, say: Say, timeout_s: float = 600) -> float:
    started = time.monotonic()
    while True:
        statuses = pull_devices(run.settings.path("pull", "status.json"), pull.pid) or {}
        states = [d["state"] for d in statuses.values()]
        live = states.count("live")
        if live == devices:
            elapsed = time.monotonic() - started
            say(f"  all {devices} devices live after {elapsed:.1f}s")
            return elapsed
        if not pull.alive() or time.monotonic() - started > timeout_s:
            raise TapstreamError(f"only {live} of {devices} devices went live; see {pull.log}")
        time.sleep(1.0)


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def _generate(control: str, pid: int, options: FleetOptions, say: Say) -> dict[str, Any]:
    """Run the punch generator for the duration, sampling the producer's CPU and memory."""
    cpu0, _rss, _threads = proc_usage(pid)
    started = time.monotonic()
    _post(control + "/rate", {"rate_per_s": options.rate_per_s})
    rss: list[float] = []
    threads = 0
    while time.monotonic() - started < options.duration_s:
        time.sleep(1.0)
        _cpu, resident, threads = proc_usage(pid)
        rss.append(resident)
    _post(control + "/rate", {"rate_per_s": 0.0})
    cpu1, _rss, _t = proc_usage(pid)
    elapsed = time.monotonic() - started
    cpu_percent = round(100 * (cpu1 - cpu0) / elapsed, 1)
    say(f"  generated for {elapsed:.0f}s; producer CPU {cpu_percent}% of one core, RSS max {max(rss):.0f} MiB")
    return {"cpu_percent": cpu_percent, "rss_mib_max": round(max(rss), 1), "rss_mib_mean": round(sum(rss) / len(rss), 1),
            "threads": threads}


def proc_usage(pid: int) -> tuple[float, float, int]:
    """CPU seconds (user + system), resident MiB and thread count of process ``pid``, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime (fields 14 and 15)
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return cpu, int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def _generated(control: str, devices: int) -> dict[str, float]:
    """event id -> the emulator's record time (epoch s) of every punch ever generated."""
    out: dict[str, float] = {}
    for n in range(devices):
        with urllib.request.urlopen(f"{control}/devices/{serial_of(n)}/records?generated=1", timeout=30) as response:
            for record in json.loads(response.read()):
                out[record["event_id"]] = float(record.get("recorded_at") or 0.0)
    return out


def _read_raw(run: BenchRun, expected: int, timeout_s: float = 120) -> list[tuple[str, str, int, float]]:
    """(event id, source, broker append time in ms, producer receive time in epoch s) of every
    message in the run's raw topic."""
    consumer = Consumer({"bootstrap.servers": run.settings.kafka.bootstrap, "group.id": f"bench-read-{run.run_id}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([run.settings.topics.raw])
    found: list[tuple[str, str, int, float]] = []
    deadline, quiet_until = time.monotonic() + timeout_s, None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if len(found) >= expected and quiet_until is None:
                    quiet_until = time.monotonic() + 3
                if quiet_until is not None and time.monotonic() > quiet_until:
                    break
                continue
            event = json.loads(msg.value() or b"{}")
            received = datetime.fromisoformat(event["received_at"]).timestamp()
            found.append((event["event_id"], event["source"], msg.timestamp()[1], received))
    finally:
        consumer.close()
    return found


def _compare(generated: dict[str, float], produced: list[tuple[str, str, int, float]]) -> dict[str, Any]:
    first: dict[str, tuple[str, int, float]] = {}
    for event_id, source, appended_ms, received in produced:
        first.setdefault(event_id, (source, appended_ms, received))
    live_ids = [e for e, at in generated.items() if e in first and first[e][0] == "pull-live" and at]
    # tap -> raw = emulator record time -> broker append; split at the producer's receive time
    live = [first[e][1] / 1000 - generated[e] for e in live_ids]
    device_part = [first[e][2] - generated[e] for e in live_ids]
    producer_part = [first[e][1] / 1000 - first[e][2] for e in live_ids]
    return {
        "generated": len(generated), "produced_messages": len(produced), "produced_distinct": len(first),
        "missed": len(set(generated) - set(first)), "extra": len(set(first) - set(generated)),
        "duplicates": len(produced) - len(first),
        "live": sum(1 for e in generated if e in first and first[e][0] == "pull-live"),
        "catch_up": sum(1 for e in generated if e in first and first[e][0] == "pull-poll"),
        "latency_ms": percentiles([1000 * x for x in live]),
        "latency_tap_to_producer_ms": percentiles([1000 * x for x in device_part]),
        "latency_producer_to_raw_ms": percentiles([1000 * x for x in producer_part]),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of ``values`` (None when empty), rounded to 0.1."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 1)}


def run_pull_log_bench(settings: Settings, records: int, say: Say, *, compare_pyzk: bool = False,
                       keep: bool = False) -> dict[str, Any]:
    """Download an N-record log and produce it; the times as one dict."""
    check_services(settings)
    run = plan_run(settings, BenchOptions(events=records))
    say(f"bench pull-log {run.run_id}: one device, {records} records; {bench_env.machine_line(bench_env.machine())}")
    procs: list[TapstreamProcess] = []
    try:
        prepare(run, say)
        port = free_port()
        _start_emulator(run, procs, 1, port, 500, records, say)
        device = DeviceInfo(serial_of(0), "bench", "pull", "UTC", "bench", True, "127.0.0.1", port)
        figures = _download_figures(run, device, say)
        figures.update(_catch_up_figures(run, device, records, say))
        if compare_pyzk:
            figures["pyzk_get_attendance_s"] = _pyzk_get_attendance(device, records, say)
    finally:
        for proc in procs:
            proc.stop()
        if not keep:
            cleanup(run, say)
    return {"bench": "pull-log", "records": records, **figures, "machine": bench_env.machine(),
            "versions": bench_env.client_versions(), "run_id": run.run_id}


def _download_figures(run: BenchRun, device: DeviceInfo, say: Say) -> dict[str, Any]:
    client = PullClient(device, 60.0)
    try:
        client.connect()
        started = time.perf_counter()
        entries = client.download()
        seconds = time.perf_counter() - started
    finally:
        client.close()
    say(f"  download + parse through pyzk: {len(entries)} records in {seconds:.2f}s")
    return {"download_parse_s": round(seconds, 2), "downloaded": len(entries)}


def _catch_up_figures(run: BenchRun, device: DeviceInfo, records: int, say: Say) -> dict[str, Any]:
    """A whole catch-up pass (connect, facts, download, convert, spool) until Kafka confirmed all."""
    spool = Spool(run.settings.path("spool", "bench-pull.sqlite3"))
    publisher = Publisher(spool, run.settings, batch=run.settings.pull.publish_batch, name="bench-pull")
    writer = SpoolWriter(spool, publisher)
    publisher.start()
    writer.start()
    worker = DeviceWorker(device, run.settings, writer)
    client = PullClient(device, 60.0)
    try:
        started = time.perf_counter()
        client.connect()
        client.facts("UTC")
        spooled = worker.catch_up(client)
        caught_up = time.perf_counter() - started
        while spool.depth() or writer.written < spooled:
            time.sleep(0.05)
        total = time.perf_counter() - started
    finally:
        client.close()
        writer.stop()
        publisher.stop()
        spool.close()
    in_kafka = len(_read_raw(run, records))
    say(f"  catch-up pass: spooled {spooled} in {caught_up:.2f}s; confirmed by Kafka after {total:.2f}s; "
        f"{in_kafka} records in {run.settings.topics.raw}")
    return {"catch_up_spooled_s": round(caught_up, 2), "catch_up_to_kafka_s": round(total, 2),
            "in_raw_topic": in_kafka}


def _pyzk_get_attendance(device: DeviceInfo, records: int, say: Say) -> float:
    zk = ZK(device.address, port=device.pull_port, timeout=120, ommit_ping=True)
    zk.connect()
    try:
        started = time.perf_counter()
        got = zk.get_attendance()
        seconds = time.perf_counter() - started
    finally:
        zk.disconnect()
    say(f"  pyzk's own get_attendance: {len(got)} records in {seconds:.2f}s")
    return round(seconds, 2)
