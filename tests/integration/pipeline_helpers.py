"""What the end-to-end tests share: one isolated pipeline, its processes and its stores.

A ``Pipeline`` is a set of fresh topics, a consumer group (the worker's app id), a Postgres DSN
and a state folder; it starts `tapstream worker` / `tapstream push` as subprocesses configured
only through TAPSTREAM_* variables, as an operator would. Process plumbing (start, stop, wait on
stats, /healthz) is infra.harness, shared with `tapstream demo`.

The embedded ClickHouse store belongs to the worker process, and chDB runs one engine per
process: the pytest process never opens it. ``clickhouse_counts`` reads it in a child process
(``python -m tests.integration.pipeline_helpers``) once the worker has exited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from confluent_kafka import Consumer, Producer

from infra.employee_sync import read_topic
from infra.harness import TapstreamProcess, free_port, pull_devices, worker_stats
from producers.registry import add_device
from schemas.codec import encode
from schemas.employee import EmployeeRecord
from schemas.punch import RawPunch
from sinks.clickhouse import count_events, open_client
from tests.factories import enriched

REPO = Path(__file__).resolve().parents[2]
# Pull producer timings for tests: seconds instead of minutes, so cycles and retries happen in a test's time.
PULL_ENV = {
    "TAPSTREAM_PULL__TIMEOUT_S": "3",
    "TAPSTREAM_PULL__LIVE_TICK_S": "0.2",
    "TAPSTREAM_PULL__CATCHUP_INTERVAL_S": "4",
    "TAPSTREAM_PULL__INFO_REFRESH_S": "4",
    "TAPSTREAM_PULL__STATUS_INTERVAL_S": "2",
    "TAPSTREAM_PULL__BACKOFF_INITIAL_S": "0.5",
    "TAPSTREAM_PULL__BACKOFF_MAX_S": "2",
    "TAPSTREAM_DEVICES__REGISTRY_REFRESH_S": "1",
}
# The worker's Postgres duties in test time: HR's employee edits synced, parked punches re-matched, every second.
FAST_WORKER = {"TAPSTREAM_WORKER__EMPLOYEE_SYNC_S": "1", "TAPSTREAM_WORKER__REMATCH_INTERVAL_S": "1"}
CLICKHOUSE_DATABASE = "tapstream"  # Settings().clickhouse.database


@dataclass
class Pipeline:
    """One isolated pipeline: topics, worker group, Postgres DSN, state folder, logs."""

    bootstrap: str
    raw: str
    unmatched: str
    dlq: str
    employees: str
    device_status: str
    raw_partitions: int
    live: str
    alerts: str
    app_id: str
    dsn: str
    state_dir: Path
    logs: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    processes: list[TapstreamProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The child environment: this one without any TAPSTREAM_* of its own, plus ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAPSTREAM_")}
        env.update({
            "TAPSTREAM_STATE_DIR": str(self.state_dir),
            "TAPSTREAM_LOG_LEVEL": "INFO",
            "TAPSTREAM_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "TAPSTREAM_TOPICS__RAW": self.raw,
            "TAPSTREAM_TOPICS__UNMATCHED": self.unmatched,
            "TAPSTREAM_TOPICS__DLQ": self.dlq,
            "TAPSTREAM_TOPICS__EMPLOYEES": self.employees,
            "TAPSTREAM_TOPICS__DEVICE_STATUS": self.device_status,
            "TAPSTREAM_TOPICS__LIVE": self.live,
            "TAPSTREAM_TOPICS__ALERTS": self.alerts,
            "TAPSTREAM_TOPICS__RAW_PARTITIONS": str(self.raw_partitions),
            "TAPSTREAM_POSTGRES__DSN": self.dsn,
            "TAPSTREAM_WORKER__APP_ID": self.app_id,
            "TAPSTREAM_WORKER__STORE": "memory://",
            "TAPSTREAM_WORKER__BATCH_WITHIN_S": "0.3",
            "TAPSTREAM_WORKER__RETRY_MAX_S": "2",
            # Tests run several workers and producers at once: /metrics only where a test asks for it.
            "TAPSTREAM_METRICS__WORKER_PORT": "0",
            "TAPSTREAM_METRICS__PULL_PORT": "0",
            **PULL_ENV,
        })
        env.update(self.env_overrides)
        return env

    @property
    def stats_file(self) -> Path:
        return self.state_dir / "worker" / "stats.json"

    @property
    def clickhouse_dsn(self) -> str:
        return f"chdb://{self.state_dir / 'clickhouse'}"

    def start(self, name: str, *args: str) -> TapstreamProcess:
        """Start `tapstream <args>`, logging to <logs>/<name>.log; stopped by ``stop_all``."""
        process = TapstreamProcess(list(args), self.logs / f"{name}.log", env=self.env(), cwd=self.logs)
        self.processes.append(process)
        return process

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `tapstream <args>` to completion with this pipeline's settings."""
        return subprocess.run(
            [sys.executable, "-m", "tapstream", *args], env=self.env(), cwd=self.logs,
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )

    def start_worker(self, name: str = "worker", timeout_s: float = 60) -> TapstreamProcess:
        """Start a worker and wait until it has written its first stats (its own, by pid)."""
        worker = self.start(name, "worker")
        wait_for(lambda: bool(worker_stats(self.stats_file, worker.pid)), timeout_s, f"{name} to start", worker)
        return worker

    def start_push(self, timeout_s: float = 60) -> tuple[TapstreamProcess, str]:
        """Start the ADMS endpoint on a free port; wait until /healthz answers; (process, base URL)."""
        port = free_port()
        push = self.start("push", "push", "--host", "127.0.0.1", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/healthz"), timeout_s, "the push endpoint to listen", push)
        return push, base

    @property
    def pull_status_file(self) -> Path:
        return self.state_dir / "pull" / "status.json"

    def start_pull(self, name: str = "pull", timeout_s: float = 60) -> TapstreamProcess:
        """Start `tapstream pull` and wait until it has written its own status file."""
        pull = self.start(name, "pull")
        wait_for(lambda: self.pull_status(pull.pid) is not None, timeout_s, f"{name} to start", pull)
        return pull

    def pull_status(self, pid: int) -> dict[str, Any] | None:
        """Device statuses from the status file of pull process ``pid`` (None until it wrote one)."""
        return pull_devices(self.pull_status_file, pid)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    def logs_text(self) -> str:
        """Every process log of this pipeline, for a failure report."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            parts.append(f"===== {log.name} (last 150 lines) =====\n" + "\n".join(text.splitlines()[-150:]))
        return "\n".join(parts)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, *watched: TapstreamProcess, interval_s: float = 0.2
) -> Any:
    """Poll ``condition`` until truthy (returned); fail if it times out or a watched process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for process in watched:
            if not process.alive():
                raise AssertionError(f"waiting for {what}: {process.log.name} exited ({process.proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f}s for {what}")
        time.sleep(interval_s)


def request(base_url: str, path: str, body: bytes | None = None, timeout_s: float = 10.0) -> tuple[int, str]:
    """One device request as a device sends it; (status, reply text), HTTP errors included."""
    req = urllib.request.Request(base_url + path, data=body, method="POST" if body is not None else "GET")
    req.add_header("User-Agent", "iClock Proxy/1.09")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")


def register_device(dsn: str, serial: str, timezone: str) -> None:
    with psycopg.connect(dsn) as conn:
        add_device(conn, serial=serial, kind="push", timezone=timezone, name=serial, site="test")


def register_pull_device(dsn: str, serial: str, port: int, timezone: str = "UTC", *, comm_key: int = 0,
                         transport: Literal["tcp", "udp"] = "tcp") -> None:
    with psycopg.connect(dsn) as conn:
        add_device(conn, serial=serial, kind="pull", timezone=timezone, name=serial, site="test",
                   address="127.0.0.1", port=port, comm_key=comm_key, transport=transport)


def add_employee(dsn: str, code: str, employee_id: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO employees (attendance_code, employee_id, name) VALUES (%s, %s, %s)",
                     (code, employee_id, f"Employee {code}"))


def synced(pipeline: Pipeline, code: str, worker: TapstreamProcess) -> None:
    """Wait until the worker has published the Postgres employees table to the topic itself."""
    wait_for(lambda: code in read_topic(pipeline.bootstrap, pipeline.employees), 30, f"{code} on the topic", worker)


def employees(codes: Iterable[str]) -> list[EmployeeRecord]:
    return [EmployeeRecord(attendance_code=c, employee_id=f"E-{c}", name=f"Employee {c}") for c in codes]


def raw_punches(serial: str, codes: list[str], count: int, start: datetime) -> list[RawPunch]:
    """``count`` distinct punches of ``serial``, one minute apart from ``start``, codes in turn."""
    received = datetime.now(UTC)
    return [
        enriched(n, serial=serial, user_code=codes[n % len(codes)], device_time=start + timedelta(minutes=n),
                 received_at=received).punch
        for n in range(count)
    ]


def produce(bootstrap: str, topic: str, punches: Iterable[RawPunch]) -> int:
    """Produce punches keyed by device serial and wait until Kafka confirms every one."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    sent = 0
    for punch in punches:
        producer.produce(topic, key=punch.device_serial.encode(), value=encode(punch), on_delivery=report)
        producer.poll(0)
        sent += 1
    left = producer.flush(30)
    assert left == 0 and not failed, f"{left} punches unconfirmed, errors {failed[:3]}"
    return sent


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30, linger_s: float = 2.0) -> list[Any]:
    """Read ``topic`` from the start until ``expected`` messages, then linger to catch extras."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"test-read-{uuid.uuid4().hex[:12]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        extra_until: float | None = None
        while True:
            now = time.monotonic()
            if extra_until is None and len(found) >= expected:
                extra_until = now + linger_s
            if (extra_until is not None and now > extra_until) or now > deadline:
                return found
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                found.append(msg)
    finally:
        consumer.close()


def pg_count(dsn: str, sql: str = "SELECT count(*) FROM attendance_records", params: tuple[Any, ...] = ()) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def clickhouse_counts(pipeline: Pipeline) -> dict[str, int]:
    """Counts of attendance_events in the worker's store, read by a child process after it exited."""
    assert not any(p.alive() for p in pipeline.processes if "worker" in p.log.name), "stop the worker first"
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.pipeline_helpers", "clickhouse-counts",
         pipeline.clickhouse_dsn, CLICKHOUSE_DATABASE],
        capture_output=True, text=True, timeout=120, cwd=pipeline.logs, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, f"reading ClickHouse failed:\n{done.stderr[-3000:]}"
    counts: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


def _print_clickhouse_counts(dsn: str, database: str) -> None:
    client = open_client(dsn, database)
    try:
        distinct = client.command(f"SELECT uniqExact(event_id) FROM {database}.attendance_events")
        counts = {
            "final": count_events(client, database, final=True),
            "plain": count_events(client, database, final=False),
            "distinct_ids": int(str(distinct)),
        }
    finally:
        client.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "clickhouse-counts":
        _print_clickhouse_counts(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tests.integration.pipeline_helpers clickhouse-counts <chdb dsn> <database>")
