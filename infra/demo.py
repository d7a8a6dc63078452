"""`tapstream demo`: the whole pipeline on the embedded default, checked against expectations.

Brings the stack up, registers three push devices, imports an HR list, starts the worker and
the ADMS endpoint as real processes, plays a simulated morning (infra.simulate), waits until
everything is carried through, then reads every store and compares with what the scenario
says must be there. Each run simulates an earlier morning, so runs never collide.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from infra import stack
from infra.employees import import_employees
from infra.simulate import Expected, SimDevice, morning, post_scenario
from producers.registry import add_device
from sinks.clickhouse import open_client
from streams.stats import read_stats
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


def run_demo(settings: Settings, say: Any = print) -> bool:
    """Run the demo; print the comparison; True when every count matches."""
    say("stack: " + stack.up(settings).to_text().splitlines()[0])
    day, seed = _next_morning(settings)
    _register(settings)
    csv_path = _employees_csv(settings)
    import_employees(csv_path, dsn=settings.postgres.effective_dsn(), bootstrap=settings.kafka.bootstrap, topic=settings.topics.employees)
    scenario = morning(DEVICES, KNOWN, UNKNOWN, day, seed)
    port = _free_port()
    logs = settings.path("demo")
    with _process(["worker"], logs / "worker.log", settings) as worker:
        # Leftovers of an interrupted run are carried through first, so they do not count here.
        _wait_caught_up(settings, worker, 120)
        offsets, baseline, since = _topic_ends(settings), _worker_stats(settings, worker), datetime.now(UTC)
        with _process(["push", "--host", "127.0.0.1", "--port", str(port)], logs / "push.log", settings):
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/healthz", 60)
            say(f"push endpoint {base}: playing the morning of {day} from {len(DEVICES)} devices")
            replies = post_scenario(base, scenario)
            _wait_drained(base, 60)
        _wait_worker(settings, baseline.get("consumed", 0) + scenario.expected.raw_messages, worker, 120)
        final = _worker_stats(settings, worker)
    # After the worker has stopped: the embedded ClickHouse store is free to open.
    observed = _observe(settings, offsets, baseline, final, since, replies)
    return _report(scenario.expected, observed, day, say)


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


class _process:
    """A `tapstream` subprocess with its log in a file; stopped with SIGTERM on exit."""

    def __init__(self, args: list[str], log: Path, settings: Settings) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log.open("wb")
        cmd = [sys.executable, "-m", "tapstream", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _wait_http(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            if time.monotonic() > deadline:
                raise TapstreamError(f"{url} did not answer within {timeout_s:.0f}s") from None
            time.sleep(0.3)


def _wait_drained(base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _wait_http(base + "/healthz", 5)["spool_depth"] > 0:
        if time.monotonic() > deadline:
            raise TapstreamError("the push spool did not drain into Kafka")
        time.sleep(0.2)


def _worker_stats(settings: Settings, worker: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The counters of this worker process ({} until it has written its own)."""
    stats = read_stats(settings.path("worker", "stats.json")) or {}
    return stats if stats.get("pid") == worker.pid else {}


def _wait_caught_up(settings: Settings, worker: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until the worker group has committed every raw message there is."""
    deadline = time.monotonic() + timeout_s
    while not _worker_stats(settings, worker) or _raw_lag(settings) > 0:
        if worker.poll() is not None:
            raise TapstreamError(f"the worker exited ({worker.returncode}); see {settings.path('demo', 'worker.log')}")
        if time.monotonic() > deadline:
            raise TapstreamError(f"the worker did not catch up with {settings.topics.raw} within {timeout_s:.0f}s")
        time.sleep(0.5)


def _raw_lag(settings: Settings) -> int:
    topic = settings.topics.raw
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": settings.worker.app_id})
    try:
        parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = consumer.committed(parts, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def _wait_worker(settings: Settings, consumed: int, worker: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = _worker_stats(settings, worker)
        last, flushed = stats.get("last_event_at"), stats.get("last_flush_at")
        if stats.get("consumed", 0) >= consumed and last and flushed and flushed >= last:
            return
        if worker.poll() is not None:
            raise TapstreamError(f"the worker exited ({worker.returncode}); see {settings.path('demo', 'worker.log')}")
        if time.monotonic() > deadline:
            raise TapstreamError(f"the worker did not finish within {timeout_s:.0f}s: {stats}")
        time.sleep(0.3)


def _topic_ends(settings: Settings) -> dict[str, int]:
    names = (settings.topics.raw, settings.topics.dlq, settings.topics.unmatched)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap, "group.id": "tapstream-demo-probe"})
    try:
        out = {}
        for name in names:
            parts = consumer.list_topics(name, timeout=10).topics[name].partitions
            out[name] = sum(consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in parts)
        return out
    finally:
        consumer.close()


def _observe(
    settings: Settings, before: dict[str, int], baseline: dict[str, Any], stats: dict[str, Any],
    since: datetime, replies: list[str],
) -> Observed:
    after = _topic_ends(settings)
    serials = [d.serial for d in DEVICES]
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
    return Observed(
        accepted=sum(int(r.split(":")[1]) for r in replies if r.startswith("OK:")),
        raw=after[settings.topics.raw] - before[settings.topics.raw],
        dlq=after[settings.topics.dlq] - before[settings.topics.dlq],
        unmatched_topic=after[settings.topics.unmatched] - before[settings.topics.unmatched],
        duplicates=int(stats.get("duplicates", 0)) - int(baseline.get("duplicates", 0)),
        unmatched=int(stats.get("unmatched", 0)) - int(baseline.get("unmatched", 0)),
        postgres=int(row[0]) if row else 0,
        clickhouse=int(str(ch)),
    )


def _report(exp: Expected, obs: Observed, day: date, say: Any) -> bool:
    lines_sent = exp.raw_messages + exp.quarantined
    checks = [
        ("ADMS lines acknowledged to devices (OK: n)", lines_sent, obs.accepted),
        ("punches published to attendance.raw", exp.raw_messages, obs.raw),
        ("bad lines + unknown-device lines -> attendance.dlq", exp.quarantined, obs.dlq),
        ("duplicates dropped by the stream (re-sent batches)", exp.resent_lines, obs.duplicates),
        ("unknown badges parked -> attendance.unmatched", exp.unmatched, obs.unmatched_topic),
        ("...of which counted by the worker", exp.unmatched, obs.unmatched),
        ("PostgreSQL attendance_records (new rows)", exp.matched, obs.postgres),
        ("ClickHouse attendance_events FINAL (new rows)", exp.matched, obs.clickhouse),
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
