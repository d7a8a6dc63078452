"""`tapstream status`: the verdict and its rendering, from fabricated parts (no services)."""

from __future__ import annotations

import json
from pathlib import Path

from infra.pipeline_probes import _soft, probe_pull, probe_spool, probe_worker
from infra.pipeline_status import (
    LagPart, PipelineStatus, PullDevice, PullPart, PushPart, ServicesPart, SpoolPart, StorePart, WorkerPart,
)
from producers.spool import Spool

NOW = 1_800_000_000.0
UP = {"kafka": True, "postgres": True, "clickhouse": True}


def healthy() -> PipelineStatus:
    return PipelineStatus(
        collected_at=NOW,
        services=ServicesPart(running=dict(UP), addresses={"kafka": "127.0.0.1:9092"}),
        worker=WorkerPart(running=True, pid=42, consumed=1200, flushed=1200, written={"postgres": 1100},
                          last_event_at=NOW - 5, last_flush_at=NOW - 4),
        lag=LagPart("tapstream-worker", "attendance.raw", lag=0),
        push=PushPart("http://127.0.0.1:8081", answering=True, devices=2),
        pull=PullPart(running=True, pid=43, devices=[PullDevice("SN-1", True, "live")]),
        spools=[SpoolPart("push", present=True), SpoolPart("pull")],
        store=StorePart(records_today=1100, open_unmatched=3, quarantined_today=1, quarantine_waiting=1,
                        devices={"push": 2, "pull": 1}),
    )


def test_a_healthy_pipeline_is_ok_and_says_so_first() -> None:
    status = healthy()
    assert status.verdict() == ("ok", [])
    text = status.to_text()
    assert text.splitlines()[0] == "OK"
    assert "consumed 1,200" in text and "running, pid 42" in text and "records today 1,100" in text


def test_no_worker_is_down() -> None:
    status = healthy()
    status.worker.running = False
    assert status.verdict() == ("down", ["worker not running"])
    assert status.to_text().startswith("DOWN: worker not running")
    assert "NOT running (last run pid 42)" in status.to_text()


def test_service_down_or_topic_missing_is_down() -> None:
    status = healthy()
    status.services.running["postgres"] = False
    status.services.missing_topics = ["attendance.raw"]
    status.store = StorePart(unknown="OperationalError: connection refused")
    state, reasons = status.verdict()
    # the unreadable Postgres data is explained by Postgres being down: not a reason of its own
    assert (state, reasons) == ("down", ["postgres down", "topic attendance.raw missing"])


def test_failing_sink_lag_and_offline_devices_degrade() -> None:
    status = healthy()
    status.worker.failing = {"postgres": "connection refused"}
    status.lag.lag = 12_345
    status.pull.devices += [PullDevice("SN-2", False, "backoff", failures=4), PullDevice("SN-3", False, "stopped")]
    state, reasons = status.verdict()
    assert state == "degraded"
    assert reasons[0].startswith("postgres sink failing since ") and "(4s ago)" in reasons[0]
    assert reasons[1:] == ["lag 12,345", "1 pull devices offline"]
    text = status.to_text()
    assert "postgres FAILING: connection refused" in text
    assert "SN-2 backoff, last seen never, clock ?, 4 failures" in text and "SN-3" not in text


def test_registered_devices_without_their_producer_and_a_stale_spool_degrade() -> None:
    status = healthy()
    status.push.answering = False
    status.pull = PullPart()
    status.spools[0] = SpoolPart("push", present=True, depth=50, oldest_age_s=600)
    assert status.verdict()[1] == [
        "pull producer not running (1 pull devices registered)",
        "push endpoint not answering (2 push devices registered)",
        "push spool backing up: 50 rows, oldest 10m",
    ]


def test_an_unreadable_part_is_unknown_with_its_reason() -> None:
    def broken() -> LagPart:
        raise RuntimeError("broker timed out\nmore detail")

    lag = _soft(lambda: LagPart("g", "t"), broken)
    assert lag.unknown == "RuntimeError: broker timed out"
    status = healthy()
    status.lag = lag
    assert status.verdict() == ("degraded", ["lag unknown (RuntimeError: broker timed out)"])
    assert "unknown (RuntimeError: broker timed out)" in status.to_text()


def test_to_dict_is_json_with_the_verdict() -> None:
    status = healthy()
    status.pull.devices.append(PullDevice("SN-2", False, "backoff"))
    data = json.loads(json.dumps(status.to_dict()))
    assert data["verdict"] == "degraded" and data["reasons"] == ["1 pull devices offline"]
    assert data["worker"]["consumed"] == 1200 and data["lag"]["lag"] == 0
    assert data["pull"]["offline"] == ["SN-2"]


def test_probes_read_the_files_producers_and_worker_write(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"pid": 2**22 + 7, "consumed": 9, "last_sink_error": {"clickhouse": "x"}}))
    worker = probe_worker(stats)
    assert (worker.running, worker.consumed, worker.failing) == (False, 9, {"clickhouse": "x"})
    assert probe_worker(tmp_path / "absent.json") == WorkerPart()

    pull_file = tmp_path / "status.json"
    pull_file.write_text(json.dumps({"pid": 2**22 + 7, "written_at": NOW, "devices": {
        "SN-9": {"connected": False, "state": "backoff", "consecutive_failures": 3, "clock_offset_s": 2.5}}}))
    pull = probe_pull(pull_file)
    assert not pull.running and pull.devices == [PullDevice("SN-9", False, "backoff", None, 2.5, 3)]

    spool = Spool(tmp_path / "push.sqlite3")
    spool.append([("attendance.raw", b"k", b"v"), ("attendance.raw", None, b"w")])
    try:
        part = probe_spool("push", spool.path, 1.0)
    finally:
        spool.close()
    assert part.present and part.depth == 2 and part.oldest_age_s is not None
    assert probe_spool("pull", tmp_path / "none.sqlite3", 1.0) == SpoolPart("pull")
