"""/api/snapshot: what the page shows on load, from the feed and the last pipeline status."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg

from infra.pipeline_status import PipelineStatus
from monitor.feed import Feed
from monitor.views import alert_data, iso

_PUSH_SEEN_SQL = """
SELECT device_serial, max(received_at) FROM attendance_records
WHERE device_serial = ANY(%s) AND punch_time >= date_trunc('day', now())
GROUP BY device_serial
"""


def build_snapshot(feed: Feed, status: PipelineStatus | None, now: datetime) -> dict[str, Any]:
    """The snapshot document (docs/live.md); consistent with the ring at this moment."""
    return {
        "generated_at": now.isoformat(),
        "devices": feed.board.rows(now),
        "today": today(status),
        "lag": lag(status),
        "alerts": [alert_data(a) for a in feed.open_alerts()],
        "recent": [json.loads(data) for data in feed.recent],
        "last_event_id": feed.ring.head.id(),
    }


def today(status: PipelineStatus | None) -> dict[str, int | None]:
    store = status.store if status is not None else None
    if store is None or store.unknown is not None:
        return {"punches": None, "unmatched": None, "quarantined": None}
    return {"punches": store.records_today, "unmatched": store.open_unmatched, "quarantined": store.quarantined_today}


def lag(status: PipelineStatus | None) -> dict[str, Any]:
    if status is None:
        return {"consumer_lag": None, "sinks_failing": {}, "last_flush_at": None, "worker_running": False}
    flushed = status.worker.last_flush_at
    return {
        "consumer_lag": status.lag.lag,
        "sinks_failing": dict(status.worker.failing),
        "last_flush_at": iso(datetime.fromtimestamp(flushed, UTC)) if flushed is not None else None,
        "worker_running": status.worker.running,
    }


def push_seen_today(dsn: str, serials: Iterable[str], timeout_s: int = 5) -> dict[str, datetime]:
    """Each push device's newest punch received today, from Postgres (the monitor's start point)."""
    wanted = sorted(serials)
    if not wanted:
        return {}
    with psycopg.connect(dsn, connect_timeout=timeout_s) as conn:
        conn.execute(f"SET statement_timeout = {timeout_s * 1000}")
        return {str(serial): seen for serial, seen in conn.execute(_PUSH_SEEN_SQL, (wanted,)) if seen is not None}
