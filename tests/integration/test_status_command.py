"""`tapstream status --json` against the real stack, run as an operator runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from infra.harness import wait_worker
from tests.integration.pipeline_helpers import (
    FAST_WORKER, Pipeline, add_employee, produce, raw_punches, synced, wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema


def status_of(pipeline: Pipeline) -> tuple[int, dict[str, Any]]:
    done = pipeline.run("status", "--json", timeout_s=60)
    assert done.stdout, f"no output (exit {done.returncode}):\n{done.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, data


def test_status_says_when_the_worker_is_missing_and_what_it_did_when_it_runs(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    pipeline = make_pipeline(pg_schema.dsn, **FAST_WORKER)
    code, before = status_of(pipeline)
    assert code == 1 and before["verdict"] == "down"
    assert "worker not running" in before["reasons"]
    assert before["worker"]["running"] is False and before["worker"]["unknown"] is None

    add_employee(pg_schema.dsn, "4001", "E-4001")
    worker = pipeline.start_worker()
    synced(pipeline, "4001", worker)
    produce(pipeline.bootstrap, pipeline.raw, raw_punches("STATUS-01", ["4001"], 25, datetime(2026, 5, 6, 7, 0)))
    wait_worker(pipeline.stats_file, worker, 25, 60)

    # the worker commits offsets about every second after it acks: lag reaches 0 shortly after
    after = wait_for(lambda: _caught_up(pipeline), 30, "status to report lag 0", worker)
    assert after["worker"]["running"] is True and after["worker"]["pid"] == worker.pid
    assert after["worker"]["consumed"] == 25 and after["worker"]["failing"] == {}
    assert after["lag"] == {"group": pipeline.app_id, "topic": pipeline.raw, "lag": 0, "unknown": None}
    assert after["store"]["records_today"] == 25 and after["store"]["open_unmatched"] == 0
    assert "worker not running" not in after["reasons"]
    assert worker.stop() == 0


def _caught_up(pipeline: Pipeline) -> dict[str, Any] | None:
    _, data = status_of(pipeline)
    return data if data["lag"]["lag"] == 0 else None
