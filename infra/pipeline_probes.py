"""The probes behind `tapstream status`: each reads one part of the pipeline from outside.

``collect_status`` runs them in parallel, each bounded by a timeout, and ``_soft`` turns any
failure into an *unknown* part carrying the reason (the model and verdict: infra.pipeline_status).
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import psycopg

from infra import stack
from infra.kafka import answers_metadata
from infra.pipeline_status import (
    LagPart, PipelineStatus, PullDevice, PullPart, PushPart, ServicesPart, SpoolPart, StorePart, WorkerPart,
)
from infra.proc import pid_alive
from streams.catchup import start_positions
from streams.stats import read_stats
from tapstream.settings import Settings

PROBE_TIMEOUT_S = 3.0
T = TypeVar("T")


def collect_status(settings: Settings, *, timeout_s: float = PROBE_TIMEOUT_S) -> PipelineStatus:
    """Read every part at once; ``timeout_s`` bounds each probe (default 3 s)."""
    lag = LagPart(settings.worker.app_id, settings.topics.raw)
    push = PushPart(_push_url(settings))
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="status") as pool:
        services = pool.submit(_soft, ServicesPart, lambda: probe_services(settings))
        worker = pool.submit(_soft, WorkerPart, lambda: probe_worker(settings.path("worker", "stats.json")))
        lag_done = pool.submit(_soft, lambda: lag, lambda: probe_lag(settings.kafka.bootstrap, lag, timeout_s))
        push_done = pool.submit(_soft, lambda: push, lambda: probe_push(push, timeout_s))
        pull = pool.submit(_soft, PullPart, lambda: probe_pull(settings.path("pull", "status.json")))
        spools = [pool.submit(_spool, name, settings, timeout_s) for name in ("push", "pull")]
        store = pool.submit(_soft, StorePart, lambda: probe_store(settings.postgres.effective_dsn(), timeout_s))
        return PipelineStatus(
            collected_at=time.time(), services=services.result(), worker=worker.result(), lag=lag_done.result(),
            push=push_done.result(), pull=pull.result(), spools=[f.result() for f in spools], store=store.result(),
        )


def _spool(name: str, settings: Settings, timeout_s: float) -> SpoolPart:
    path = settings.path("spool", f"{name}.sqlite3")
    return _soft(lambda: SpoolPart(name), lambda: probe_spool(name, path, timeout_s))


def _soft(empty: Callable[[], T], probe: Callable[[], T]) -> T:
    """``probe()``, or ``empty()`` marked unknown with the reason: status must never crash."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 — any failure of a probe is a fact to show, not a crash
        part = empty()
        first_line = (str(exc).strip().splitlines() or [""])[0]
        setattr(part, "unknown", f"{type(exc).__name__}: {first_line}".rstrip(": "))
        return part


def probe_services(settings: Settings) -> ServicesPart:
    """The stack's services and topics (infra.stack.status: starts nothing, opens no store)."""
    current = stack.status(settings)
    services = (current.kafka, current.postgres, current.clickhouse)
    return ServicesPart(
        running={s.name: s.running for s in services}, addresses={s.name: s.address for s in services},
        # Topics can only be listed when Kafka answers; a down broker is reason enough.
        missing_topics=[n for n, p in current.topics.items() if p is None] if current.kafka.running else [],
    )


def probe_worker(stats_file: Path) -> WorkerPart:
    """The stats file's counters, and whether the pid that wrote them is alive."""
    stats = read_stats(stats_file)
    if stats is None:
        return WorkerPart()
    pid = int(stats["pid"])  # a recycled pid reads as alive: lag and last flush tell the difference
    return WorkerPart(
        running=pid_alive(pid), pid=pid, consumed=stats.get("consumed", 0), flushed=stats.get("flushed", 0),
        duplicates=stats.get("duplicates", 0), unmatched=stats.get("unmatched", 0),
        quarantined=stats.get("quarantined", 0), rejected=stats.get("rejected", 0),
        written=dict(stats.get("written", {})), failing=dict(stats.get("last_sink_error", {})),
        last_event_at=stats.get("last_event_at"), last_flush_at=stats.get("last_flush_at"),
    )


def probe_lag(bootstrap: str, part: LagPart, timeout_s: float) -> LagPart:
    # Asked quietly first: start_positions' consumer logs every failed connect to stderr.
    if not answers_metadata(bootstrap, timeout_s):
        part.unknown = f"Kafka at {bootstrap} does not answer"
        return part
    positions = start_positions(bootstrap, part.group, part.topic, timeout_s=timeout_s)
    part.lag = sum(end - start for start, end in positions.values())
    return part


def _push_url(settings: Settings) -> str:
    host = settings.push.host
    # A wildcard listen address is reached on loopback from this machine.
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{settings.push.port}"


def probe_push(part: PushPart, timeout_s: float) -> PushPart:
    """GET /healthz; a refused or timed-out connection is "not answering", not unknown."""
    try:
        with urllib.request.urlopen(part.url + "/healthz", timeout=timeout_s) as response:
            health = json.loads(response.read())
    except OSError:
        return part
    part.answering = True
    part.devices = health.get("registry", {}).get("devices")
    return part


def probe_pull(status_file: Path) -> PullPart:
    """The pull producer's status file (producers/pull/supervisor.py writes it every second)."""
    try:
        document = json.loads(status_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return PullPart()
    pid = int(document["pid"])
    devices = [
        PullDevice(serial, bool(d.get("connected")), str(d.get("state", "?")), d.get("last_seen"),
                   d.get("clock_offset_s"), int(d.get("consecutive_failures", 0)))
        for serial, d in sorted(document.get("devices", {}).items())
    ]
    return PullPart(running=pid_alive(pid), pid=pid, devices=devices)


def probe_spool(name: str, path: Path, timeout_s: float) -> SpoolPart:
    """Depth and oldest row of a spool file, read-only (WAL lets us read beside its writer)."""
    if not path.exists():
        return SpoolPart(name)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
    try:
        depth, oldest = db.execute("SELECT count(*), min(appended_at) FROM outbox").fetchone()
    finally:
        db.close()
    age = None if oldest is None else max(0.0, time.time() - oldest)
    return SpoolPart(name, present=True, depth=int(depth), oldest_age_s=age)


_STORE_SQL = """
SELECT (SELECT count(*) FROM attendance_records WHERE ingested_at >= date_trunc('day', now())),
       (SELECT count(*) FROM unmatched_punches WHERE resolved_at IS NULL),
       (SELECT count(*) FROM quarantine WHERE quarantined_at >= date_trunc('day', now())),
       (SELECT count(*) FROM quarantine WHERE replayed_at IS NULL)
"""


def probe_store(dsn: str, timeout_s: float) -> StorePart:
    """Today's counts ("today" in the database session's time zone) and enabled devices per kind."""
    with psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s))) as conn:
        conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
        row = conn.execute(_STORE_SQL).fetchone()
        kinds = conn.execute("SELECT kind, count(*) FROM devices WHERE enabled GROUP BY kind").fetchall()
    assert row is not None  # a SELECT without FROM always returns one row
    return StorePart(records_today=row[0], open_unmatched=row[1], quarantined_today=row[2],
                     quarantine_waiting=row[3], devices={str(k): int(n) for k, n in kinds})
