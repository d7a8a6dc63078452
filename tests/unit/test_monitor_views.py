"""Device rows and the snapshot document of the monitor, as plain functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from infra.pipeline_status import LagPart, PipelineStatus, PullPart, PushPart, ServicesPart, StorePart, WorkerPart
from monitor.feed import Feed, FeedMetrics
from monitor.ring import Ring
from monitor.snapshot import build_snapshot
from monitor.views import DeviceBoard, log_used_pct, push_row
from producers.registry import DeviceInfo

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PUSH = DeviceInfo("P1", "Door", "push", "UTC", "HQ", True)


def test_log_use_is_a_percentage_of_capacity_when_both_counts_are_known() -> None:
    assert log_used_pct(450, 1000) == 45.0
    assert log_used_pct(None, 1000) is None and log_used_pct(10, 0) is None and log_used_pct(10, None) is None


def test_a_push_device_is_online_while_its_newest_punch_is_recent() -> None:
    assert push_row("P1", PUSH, NOW - timedelta(seconds=30), NOW, 600)["state"] == "receiving"
    silent = push_row("P1", PUSH, NOW - timedelta(seconds=601), NOW, 600)
    assert silent["online"] is False and silent["state"] == "silent" and silent["site"] == "HQ"
    assert push_row("P1", None, None, NOW, 600)["state"] == "unseen"


def test_a_push_device_falling_silent_is_announced_once() -> None:
    board = DeviceBoard({"P1": PUSH}.get, lambda: {"P1": PUSH}, offline_after_s=600)
    board.push_seen["P1"] = NOW - timedelta(seconds=10)
    assert [r["online"] for r in board.changed_push_rows(NOW)] == [True]
    assert board.changed_push_rows(NOW) == []
    later = NOW + timedelta(seconds=700)
    assert [r["state"] for r in board.changed_push_rows(later)] == ["silent"]
    assert board.changed_push_rows(later) == []


def status(**store: int) -> PipelineStatus:
    return PipelineStatus(
        collected_at=NOW.timestamp(), services=ServicesPart(),
        worker=WorkerPart(running=True, failing={"clickhouse": "down"}, last_flush_at=NOW.timestamp()),
        lag=LagPart("g", "raw", lag=42), push=PushPart("http://x"), pull=PullPart(), spools=[],
        store=StorePart(records_today=store.get("records", 7), open_unmatched=2, quarantined_today=1),
    )


def test_the_snapshot_carries_counts_lag_and_the_resume_id() -> None:
    board = DeviceBoard({"P1": PUSH}.get, lambda: {"P1": PUSH}, offline_after_s=600)
    feed = Feed(Ring(10), board, 5, FeedMetrics(CollectorRegistry()))
    doc = build_snapshot(feed, status(), NOW)
    assert doc["today"] == {"punches": 7, "unmatched": 2, "quarantined": 1}
    assert doc["lag"] == {"consumer_lag": 42, "sinks_failing": {"clickhouse": "down"},
                          "last_flush_at": NOW.isoformat(), "worker_running": True}
    assert doc["last_event_id"] == "l0.s0.a0" and doc["recent"] == [] and doc["alerts"] == []
    assert [d["serial"] for d in doc["devices"]] == ["P1"]
    unknown = build_snapshot(feed, None, NOW)
    assert unknown["today"] == {"punches": None, "unmatched": None, "quarantined": None}
    assert unknown["lag"]["consumer_lag"] is None and unknown["lag"]["worker_running"] is False
