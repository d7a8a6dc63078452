"""Alerts on the real broker: one firing per incident and one resolution, on the topic and on a
webhook, across many evaluations and across a restart of the runner (monitor/alerting.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka import Producer
from pydantic import SecretStr

from monitor.alerting import AlertRunner, read_alerts
from schemas.alert import Alert, AlertState
from schemas.codec import decode, encode
from schemas.device_status import DeviceStatus, LinkState
from tapstream.settings import Settings
from tests.integration.conftest import free_ports, run_cli
from tests.integration.pipeline_helpers import consume_all

INTERVAL_S = 0.4
FIRING = {"device_offline:SN-OFF", "clock_drift:SN-DRIFT", "device_offline:PU-2"}


def status(serial: str, *, connected: bool = True, seen_ago_s: float = 0.0, offset_s: float = 1.0) -> DeviceStatus:
    now = datetime.now(UTC)
    return DeviceStatus(device_serial=serial, state=LinkState.LIVE if connected else LinkState.BACKOFF,
                        connected=connected, last_seen=now - timedelta(seconds=seen_ago_s), clock_offset_s=offset_s,
                        records=10, records_capacity=100_000, reported_at=now)


def publish_statuses(bootstrap: str, topic: str, statuses: list[DeviceStatus]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for s in statuses:
        producer.produce(topic, key=s.device_serial.encode(), value=encode(s))
    assert producer.flush(15) == 0


class Hook:
    """A webhook receiver on a free port: answers 500 to its first POST (the runner must retry)."""

    def __init__(self) -> None:
        self.requests = 0
        self.received: list[Alert] = []
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests == 1:
            return web.Response(status=500)
        self.received.append(decode(Alert, await request.read()))
        return web.Response(status=204)


async def wait_until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.fixture
def alert_settings(stack_settings: Settings, fresh_topic: Callable[..., str], fresh_group: str,
                   tmp_path: Path) -> Iterator[Settings]:
    """Settings on fresh topics; every other probe looks at nothing (an empty state folder, a fresh
    raw topic and group, no push endpoint)."""
    (push_port,) = free_ports(1)
    topics = stack_settings.topics.model_copy(update={
        "device_status": fresh_topic(1, {"cleanup.policy": "compact"}, prefix="alerts.status"),
        "alerts": fresh_topic(1, prefix="alerts.alerts"), "raw": fresh_topic(1, prefix="alerts.raw"),
    })
    yield stack_settings.model_copy(update={
        "state_dir": tmp_path / "state", "topics": topics,
        "worker": stack_settings.worker.model_copy(update={"app_id": fresh_group}),
        "push": stack_settings.push.model_copy(update={"port": push_port}),
        "alerts": stack_settings.alerts.model_copy(update={
            "interval_s": INTERVAL_S, "device_offline_s": 60.0, "clock_drift_s": 120.0,
            "webhook_timeout_s": 2.0, "resolve_after_checks": 2,
        }),
    })


def test_one_firing_and_one_resolution_per_incident(
    alert_settings: Settings, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = alert_settings
    hook = Hook()
    s.alerts.webhook_url = SecretStr(hook.url)
    push_seen = {"PU-1": datetime.now(UTC), "PU-2": datetime.now(UTC) - timedelta(hours=1)}
    publish_statuses(kafka_bootstrap, s.topics.device_status, [
        status("SN-OFF", connected=False, seen_ago_s=7200), status("SN-DRIFT", offset_s=600.0), status("SN-OK"),
    ])

    def on_topic() -> list[Alert]:
        return read_alerts(kafka_bootstrap, s.topics.alerts)

    async def start(runner: AlertRunner) -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        return stop, asyncio.create_task(runner.run(stop))

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        server = web.AppRunner(app)
        await server.setup()
        await web.TCPSite(server, "127.0.0.1", hook.port).start()
        try:
            # 1. Three incidents fire once each, however many rounds pass.
            first = AlertRunner(s, push_last_seen=lambda: push_seen)
            stop, task = await start(first)
            await wait_until(lambda: len(hook.received) >= 3)
            await asyncio.sleep(8 * INTERVAL_S)
            fired = await asyncio.to_thread(on_topic)
            assert {a.key for a in fired} == FIRING and len(fired) == 3
            assert all(a.state is AlertState.FIRING for a in fired)
            assert sorted(a.alert_id for a in hook.received) == sorted(a.alert_id for a in fired)
            assert hook.requests == 4  # the first POST got a 500 and was retried
            drift = next(a for a in fired if a.kind == "clock_drift")
            assert (drift.value, drift.threshold) == (600.0, 120.0)
            assert {a.key for a in first.open_alerts()} == FIRING
            stop.set()
            await task

            listed = await asyncio.to_thread(_list_open, monkeypatch, s.topics.alerts)
            assert sorted(a["alert_id"] for a in listed) == sorted(a.alert_id for a in fired)

            # 2. A new runner reopens them from the topic: no re-firing ...
            second = AlertRunner(s, push_last_seen=lambda: push_seen)
            stop, task = await start(second)
            await wait_until(lambda: len(second.open_alerts()) == 3)
            await asyncio.sleep(6 * INTERVAL_S)
            assert len(await asyncio.to_thread(on_topic)) == 3 and len(hook.received) == 3

            # ... and once the devices recover, each incident is resolved exactly once.
            publish_statuses(kafka_bootstrap, s.topics.device_status, [
                status("SN-OFF"), status("SN-DRIFT", offset_s=2.0),
            ])
            push_seen["PU-2"] = datetime.now(UTC)
            await wait_until(lambda: len(hook.received) >= 6)
            await asyncio.sleep(6 * INTERVAL_S)
            assert second.open_alerts() == []
            stop.set()
            await task
        finally:
            await server.cleanup()

    asyncio.run(main())
    # Read by an independent consumer: the whole history of the topic.
    messages = consume_all(kafka_bootstrap, s.topics.alerts, expected=6, timeout_s=20, linger_s=1.0)
    events = [(m.key().decode(), decode(Alert, m.value())) for m in messages]
    assert all(key == alert.key for key, alert in events)
    by_id: dict[str, list[AlertState]] = {}
    for _, alert in events:
        by_id.setdefault(alert.alert_id, []).append(alert.state)
    assert len(by_id) == 3 and all(states == [AlertState.FIRING, AlertState.RESOLVED] for states in by_id.values())
    assert [(a.alert_id, a.state) for a in hook.received] == [(a.alert_id, a.state) for _, a in events]


def _list_open(monkeypatch: pytest.MonkeyPatch, topic: str) -> list[dict[str, Any]]:
    """`tapstream alerts list --json` on the test's alerts topic."""
    monkeypatch.setenv("TAPSTREAM_TOPICS__ALERTS", topic)
    done = run_cli("alerts", "list", "--json", timeout_s=60)
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed
