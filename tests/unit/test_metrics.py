"""Prometheus metrics: each process's hooks move its metrics by exactly what happened; a busy
port costs the metrics, never the process."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from infra.worker import _watch_lag
from producers.publisher import publishing_metrics
from producers.pull.device import DeviceWorker
from producers.pull.metrics import PullMetrics, devices_metrics
from producers.push_server import make_app
from schemas.quarantine import Reason, Stage, quarantine
from streams.delivery import DeliveryOutcome
from streams.logic import BatchPlan
from streams.stats import WorkerMetrics, WorkerStats, read_stats
from tapstream.errors import PermanentSinkError
from tapstream.metrics import collect_with, exposition, family, new_registry, serve
from tapstream.settings import KafkaSettings, Settings
from tests.factories import enriched
from tests.unit.test_pull_device import DEVICE, FakeClient, FakeDevice, FakeOutput, entry, fast_settings, start, wait_for
from tests.unit.test_push_server import E9_BODY, SERIAL, Env, FakePublisher


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


# --- worker -------------------------------------------------------------------------------

def test_worker_hooks_move_the_metrics_by_what_the_batch_did() -> None:
    registry = new_registry()
    stats = WorkerStats(metrics=WorkerMetrics(registry, ["postgres", "clickhouse"]))
    rows = [enriched(n) for n in range(4)]
    bad = quarantine(Reason.NOT_TEXT, "junk", Stage.STREAM, b"\xff")
    plan = BatchPlan(to_write=rows, quarantined=[bad], duplicates=2)
    rejected = DeliveryOutcome(written=3, inserted=3, attempts=3, seconds=0.2,
                               rejected=[(rows[3], PermanentSinkError("data_exception", "out of range"))])
    for _ in range(7):
        stats.note_consumed()
    stats.note_retry("postgres", 1, "connection refused")
    stats.note_retry("postgres", 2, "connection refused")
    stats.note_batch(plan, [DeliveryOutcome(4, 1, 1, 0.03), rejected], ["postgres", "clickhouse"])

    assert value(registry, "tapstream_worker_events_consumed_total") == 7
    out = {o: value(registry, "tapstream_worker_events_out_total", outcome=o)
           for o in ("stored", "duplicate", "unmatched", "quarantined", "rejected")}
    assert out == {"stored": 3, "duplicate": 2, "unmatched": 0, "quarantined": 1, "rejected": 1}
    assert sum(v or 0 for v in out.values()) == stats.flushed == 7
    assert value(registry, "tapstream_worker_sink_rows_total", sink="postgres", result="inserted") == 1
    assert value(registry, "tapstream_worker_sink_rows_total", sink="clickhouse", result="rejected") == 1
    assert value(registry, "tapstream_worker_sink_failures_total", sink="postgres") == 2
    assert value(registry, "tapstream_worker_sink_failures_total", sink="clickhouse") == 0
    assert value(registry, "tapstream_worker_sink_batch_seconds_count", sink="clickhouse") == 1
    assert value(registry, "tapstream_worker_sink_batch_seconds_bucket", sink="clickhouse", le="0.1") == 0
    assert value(registry, "tapstream_worker_sink_batch_seconds_bucket", sink="clickhouse", le="0.25") == 1
    assert value(registry, "tapstream_worker_batches_total") == 1
    assert "metrics" not in stats.as_dict() and stats.as_dict()["consumed"] == 7


def test_an_empty_sink_batch_has_no_latency_and_stats_without_metrics_still_count() -> None:
    registry = new_registry()
    stats = WorkerStats(metrics=WorkerMetrics(registry, ["postgres"]))
    stats.note_batch(BatchPlan(duplicates=3), [DeliveryOutcome()], ["postgres"])
    assert value(registry, "tapstream_worker_sink_batch_seconds_count", sink="postgres") is None
    assert value(registry, "tapstream_worker_events_out_total", outcome="duplicate") == 3
    plain = WorkerStats()
    plain.note_consumed()
    plain.note_batch(BatchPlan(duplicates=1), [], [])
    assert plain.flushed == 1


def test_lag_is_end_minus_committed_per_partition_never_negative() -> None:
    registry = new_registry()
    metrics = WorkerMetrics(registry)
    metrics.set_lag("attendance.raw", {0: (10, 25), 1: (7, 7), 2: (9, 5)})
    lags = [value(registry, "tapstream_worker_consumer_lag", topic="attendance.raw", partition=str(p)) for p in range(3)]
    assert lags == [15, 0, 0]


# --- serving --------------------------------------------------------------------------------

def test_a_busy_port_is_logged_once_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    registry = new_registry()
    collect_with(registry, lambda: [family("gauge", "tapstream_test_value", "a test value", 42)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert serve(registry, "127.0.0.1", port, "TAPSTREAM_METRICS__WORKER_PORT") is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "TAPSTREAM_METRICS__WORKER_PORT" in errors[0].getMessage()
    assert serve(registry, "127.0.0.1", 0) is None  # 0: off
    server = serve(registry, "127.0.0.1", port)  # free again: served
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert parse(response.read().decode())[("tapstream_test_value", frozenset())] == 42
    finally:
        server.shutdown()
        server.server_close()


def test_a_failing_sample_costs_its_own_metrics_only() -> None:
    registry = new_registry()
    calls = []

    def broken() -> list[Metric]:
        calls.append(1)
        if len(calls) > 1:  # the first call describes the collector at registration
            raise RuntimeError("spool closed")
        return [family("gauge", "tapstream_broken", "breaks", 1)]

    collect_with(registry, broken)
    collect_with(registry, lambda: [family("counter", "tapstream_fine", "works", {("a",): 3}, ["x"])])
    samples = parse(exposition(registry).decode())
    assert samples[("tapstream_fine_total", frozenset({("x", "a")}))] == 3
    assert not any(name == "tapstream_broken" for name, _ in samples)


# --- push endpoint --------------------------------------------------------------------------

def test_push_metrics_after_an_adms_batch(tmp_path: Path) -> None:
    env = Env(tmp_path)
    body = E9_BODY + b"\xff\xfe\x00junk\n1\tyesterday\t0\t1\n"

    async def scenario() -> str:
        app = make_app(env.settings, env.spool, env.registry, env.publisher)
        async with TestClient(TestServer(app)) as client:
            assert (await client.post(f"/iclock/cdata?SN={SERIAL}&table=ATTLOG", data=body)).status == 200
            assert (await client.post(f"/iclock/cdata?SN={SERIAL}&table=WeirdTable", data=b"x")).status == 200
            assert (await client.get("/iclock/getrequest")).status == 400  # no SN
            await client.get(f"/iclock/getrequest?SN={SERIAL}")
            response = await client.get("/metrics")
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
            return await response.text()

    samples = parse(asyncio.run(scenario()))

    def requests(endpoint: str, table: str, status: str) -> float:
        return samples.get(("tapstream_push_requests_total",
                            frozenset({("endpoint", endpoint), ("table", table), ("status", status)})), 0)

    assert requests("cdata", "ATTLOG", "200") == 1 and requests("cdata", "other", "200") == 1
    assert requests("getrequest", "none", "400") == 1 and requests("getrequest", "none", "200") == 1
    assert samples[("tapstream_push_punches_accepted_total", frozenset())] == 3
    reasons = {dict(labels)["reason"]: v for (name, labels), v in samples.items() if name == "tapstream_push_quarantined_total"}
    assert reasons == {"not_text": 1, "bad_timestamp": 1, "unknown_table": 1}
    push = frozenset({("producer", "push")})
    assert samples[("tapstream_spool_depth", push)] == 6  # 3 punches + 3 dead letters, nothing published (fake)
    assert samples[("tapstream_spool_oldest_age_seconds", push)] >= 0
    assert samples[("tapstream_published_records_total", push)] == 0
    assert samples[("tapstream_push_devices_seen", frozenset())] == 1
    assert samples[("tapstream_push_devices_registered", frozenset())] == 3


def test_publishing_metrics_read_the_spool_and_the_publisher(tmp_path: Path) -> None:
    env = Env(tmp_path)
    publisher = FakePublisher()
    assert _samples(publishing_metrics("pull", env.spool, publisher))[("tapstream_spool_oldest_age_seconds", "pull")] == 0
    env.spool.append([("attendance.raw", b"k", b"v")] * 2)
    samples = _samples(publishing_metrics("pull", env.spool, publisher))
    assert samples[("tapstream_spool_depth", "pull")] == 2
    assert samples[("tapstream_publish_failures_total", "pull")] == 0  # the fake has no failed_rounds: 0


def _samples(metrics: list[Metric]) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["producer"]): s.value for m in metrics for s in m.samples}


# --- pull producer --------------------------------------------------------------------------

def test_pull_metrics_count_punches_by_source_failures_and_states() -> None:
    registry = new_registry()
    metrics = PullMetrics(registry)
    device, out = FakeDevice(log=[entry(0), entry(1), entry(2)], fail_connects=1), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(), out, client_factory=lambda d, t: FakeClient(device), metrics=metrics)
    collect_with(registry, lambda: devices_metrics([worker]))
    thread = start(worker)
    try:
        wait_for(lambda: worker.status.state.value == "live")
        device.live.put(entry(3))
        wait_for(lambda: len(out.punches()) == 4)
        samples = parse(exposition(registry).decode())
    finally:
        worker.stop()
        thread.join(5)
    assert samples[("tapstream_pull_punches_total", frozenset({("source", "poll")}))] == 3
    assert samples[("tapstream_pull_punches_total", frozenset({("source", "live")}))] == 1
    assert samples[("tapstream_pull_device_failures_total", frozenset())] == 1
    assert samples[("tapstream_pull_devices_connected", frozenset())] == 1
    assert samples[("tapstream_pull_devices", frozenset({("state", "live")}))] == 1
    assert samples[("tapstream_pull_devices", frozenset({("state", "backoff")}))] == 0
    assert samples[("tapstream_pull_device_connected", frozenset({("device", DEVICE.serial)}))] == 1


def test_the_lag_probe_survives_kafka_away_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        settings = Settings(kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed.getsockname()[1]}"))
        registry, done = new_registry(), threading.Event()
        metrics = WorkerMetrics(registry)
        probe = threading.Thread(target=_watch_lag, args=(settings, metrics, done, 0.1), daemon=True)
        with caplog.at_level(logging.WARNING, logger="infra.worker"):
            probe.start()
            wait_for(lambda: (value(registry, "tapstream_worker_lag_probe_failures_total") or 0) >= 3)
            done.set()
            probe.join(5)
    assert not probe.is_alive()
    assert sum("consumer lag" in r.getMessage() for r in caplog.records) == 1


def test_a_throttled_stats_file_holds_back_saves_and_writes_them_when_due(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    stats = WorkerStats(path=path, save_every_s=3600)
    stats.note_batch(BatchPlan(duplicates=1), [], [])  # the first batch is saved at once
    assert read_stats(path)["duplicates"] == 1  # type: ignore[index]
    stats.note_batch(BatchPlan(duplicates=2), [], [])  # within the interval: held back
    assert read_stats(path)["duplicates"] == 1  # type: ignore[index]
    stats.save_held()
    saved = read_stats(path)
    assert saved is not None and saved["duplicates"] == 3 and "save_every_s" not in saved
    stats.save_held()  # nothing held: no write
    path.unlink()
    stats.save_held()
    assert not path.exists()
