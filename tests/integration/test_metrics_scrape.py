"""Prometheus /metrics of real processes: the push endpoint and the worker, scraped over HTTP on
free ports after known traffic; every counter moved by exactly what the test sent."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from infra.employees import publish_employees
from infra.harness import free_port, wait_drained, wait_worker
from infra.simulate import post
from tests.integration.pipeline_helpers import Pipeline, employees, register_device, wait_for

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
KNOWN = ["3001", "3002", "3003", "3004"]
STRANGER = "3999"  # no employee: parked (unmatched) once; its re-send is a duplicate (dedup remembers parked punches)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def produce_garbage(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"E2E-MET-01", value=b"not an event")
    assert producer.flush(30) == 0


def test_push_and_worker_metrics_count_what_was_sent(make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema) -> None:
    worker_port = free_port()
    pipeline = make_pipeline(pg_schema.dsn, TAPSTREAM_METRICS__WORKER_PORT=str(worker_port))
    serial = "E2E-MET-01"
    register_device(pg_schema.dsn, serial, "UTC")
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(KNOWN))
    at = datetime(2026, 3, 2, 7, 30, 0)
    lines = [f"{code}\t{at.replace(minute=n):%Y-%m-%d %H:%M:%S}\t0\t1\t\t0\t0" for n, code in enumerate([*KNOWN, STRANGER])]
    body = ("\r\n".join([*lines, "3001\tnot a time\t0\t1"]) + "\r\n").encode()  # 5 punches and 1 bad line

    worker = pipeline.start_worker()
    push, base = pipeline.start_push()
    path = f"/iclock/cdata?SN={serial}&table=ATTLOG&Stamp=9999"
    assert post(base, path, body) == "OK: 6"
    wait_drained(base, 60)
    wait_worker(pipeline.stats_file, worker, 5, 60)
    assert post(base, path, body) == "OK: 6"  # the same batch again: the stream drops all 5 as duplicates
    produce_garbage(pipeline.bootstrap, pipeline.raw)  # undecodable: quarantined by the worker
    wait_drained(base, 60)
    wait_worker(pipeline.stats_file, worker, 11, 60)

    pushed = scrape(base + "/metrics")
    assert pushed[("tapstream_push_requests_total", labels(endpoint="cdata", table="ATTLOG", status="200"))] == 2
    assert pushed[("tapstream_push_punches_accepted_total", frozenset())] == 10
    assert pushed[("tapstream_push_quarantined_total", labels(reason="bad_timestamp"))] == 2
    assert pushed[("tapstream_published_records_total", labels(producer="push"))] == 12  # punches + dead letters
    assert pushed[("tapstream_spool_depth", labels(producer="push"))] == 0
    assert pushed[("tapstream_push_devices_seen", frozenset())] == 1

    metrics_url = f"http://127.0.0.1:{worker_port}/metrics"
    got = scrape(metrics_url)
    assert got[("tapstream_worker_events_consumed_total", frozenset())] == 11
    out = {o: got[("tapstream_worker_events_out_total", labels(outcome=o))]
           for o in ("stored", "duplicate", "unmatched", "quarantined", "rejected")}
    assert out == {"stored": 4, "duplicate": 5, "unmatched": 1, "quarantined": 1, "rejected": 0}
    for sink in ("postgres", "clickhouse"):
        assert got[("tapstream_worker_sink_rows_total", labels(sink=sink, result="inserted"))] == 4
        assert got[("tapstream_worker_sink_failures_total", labels(sink=sink))] == 0
        assert got[("tapstream_worker_sink_batch_seconds_count", labels(sink=sink))] >= 1
        assert got[("tapstream_worker_sink_batch_seconds_sum", labels(sink=sink))] > 0
    # The lag probe reads committed offsets every few seconds: every partition drains to 0.
    wait_for(lambda: _lags(scrape(metrics_url), pipeline.raw) == [0.0, 0.0], 30, "the raw topic's lag to reach 0", worker)
    assert push.alive() and worker.stop() == 0


def _lags(samples: Samples, topic: str) -> list[float]:
    return [samples.get(("tapstream_worker_consumer_lag", labels(topic=topic, partition=str(p))), -1.0) for p in (0, 1)]
