"""The monitor's /events on the real broker: resume without gap or repeat, slow clients, filters.

Each test runs the monitor in this process (monitor.server.Monitor on a free port) over fresh
topics, writes LivePunch / DeviceStatus / Alert records straight to them (the last test has a
real worker publish them), and reads /events with aiohttp as a browser's EventSource would. Every blocking call (producing, a raw socket)
runs in a thread: the monitor shares this event loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psycopg
import pytest
from confluent_kafka import Producer
from pydantic import BaseModel, SecretStr

from infra.employees import publish_employees
from monitor.ring import parse_id
from monitor.server import Monitor
from producers.registry import add_device
from schemas.alert import Alert, AlertKind, AlertState
from schemas.codec import encode
from schemas.device_status import DeviceStatus, LinkState
from schemas.live import LivePunch, live_punch
from tapstream.settings import MonitorSettings, Settings
from tests.factories import enriched
from tests.integration.conftest import free_ports
from tests.integration.pipeline_helpers import Pipeline, employees, produce, raw_punches

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

NORTH, SOUTH = "SN-NORTH", "SN-SOUTH"


@dataclass(frozen=True)
class Frame:
    event: str
    id: str
    data: dict[str, Any]

    @property
    def identity(self) -> tuple[Any, ...]:
        """What makes an event itself (for exactly-once checks)."""
        d = self.data
        if self.event == "punch":
            return ("punch", d["event_id"])
        if self.event == "device":
            return ("device", d["serial"], d["last_seen"])
        return (self.event, d.get("alert_id"), d.get("state"))


class Sse:
    """An /events reader: frames in order, like EventSource (comments skipped)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.resp: aiohttp.ClientResponse | None = None

    async def open(self, query: str = "", last_id: str | None = None) -> Sse:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        self.resp = await self.session.get(f"{self.base}/events{query}", headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert self.resp.status == 200 and self.resp.headers["Content-Type"].startswith("text/event-stream")
        return self

    async def next(self, timeout_s: float) -> Frame | None:
        """The next frame, or None when none comes within ``timeout_s`` or the stream ended."""
        assert self.resp is not None
        fields: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = await asyncio.wait_for(self.resp.content.readline(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return None
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text.startswith(":"):
                continue
            if text:
                name, _, value = text.partition(": ")
                fields[name] = value
            elif fields:
                return Frame(fields["event"], fields["id"], json.loads(fields["data"]))

    async def take(self, count: int, timeout_s: float = 20.0) -> list[Frame]:
        out: list[Frame] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count:
            frame = await self.next(deadline - time.monotonic())
            if frame is None:
                break
            out.append(frame)
        return out

    def close(self) -> None:
        assert self.resp is not None
        self.resp.close()  # drops the connection, unread frames included: a killed tab


@dataclass(frozen=True)
class Topics:
    live: str
    status: str
    alerts: str


@pytest.fixture
def topics(fresh_topic: Callable[..., str]) -> Topics:
    return Topics(fresh_topic(1, prefix="mon.live"), fresh_topic(1, {"cleanup.policy": "compact"}, prefix="mon.status"),
                  fresh_topic(1, prefix="mon.alerts"))


@pytest.fixture
def settings_for(stack_settings: Settings, topics: Topics, pg_schema: PgSchema,
                 tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """``settings_for(**monitor)``: Settings on the fresh topics and schema, a free port, no alerts."""
    with psycopg.connect(pg_schema.dsn) as conn:
        add_device(conn, serial=NORTH, kind="push", timezone="UTC", name="North door", site="north")
        add_device(conn, serial=SOUTH, kind="pull", timezone="UTC", name="South gate", site="south",
                   address="127.0.0.1")

    def make(**monitor: Any) -> Settings:
        (port,) = free_ports(1)
        return stack_settings.model_copy(update={
            "state_dir": tmp_path,
            "topics": stack_settings.topics.model_copy(update={
                "live": topics.live, "device_status": topics.status, "alerts": topics.alerts}),
            "postgres": stack_settings.postgres.model_copy(update={"dsn": SecretStr(pg_schema.dsn)}),
            "monitor": MonitorSettings(**{"port": port, "run_alerts": False, "heartbeat_s": 2.0,
                                          "snapshot_interval_s": 1.0, **monitor}),
        })

    yield make


class Kafka:
    """Writes contract records to the fresh topics, confirmed (blocking: call it in a thread)."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.n = 0

    def send(self, records: list[tuple[str, str, BaseModel]]) -> None:
        for topic, key, model in records:
            self.producer.produce(topic, key=key.encode(), value=encode(model))
        assert self.producer.flush(20) == 0

    def punches(self, count: int, serial: str = NORTH, name: str = "Ada") -> list[tuple[str, str, BaseModel]]:
        now = datetime.now(UTC)
        out: list[tuple[str, str, BaseModel]] = []
        for _ in range(count):
            self.n += 1
            row = enriched(self.n, serial=serial, device_time=datetime(2026, 12, 1, 8) + timedelta(seconds=self.n),
                           received_at=now)
            out.append((self.topics.live, serial, live_punch(row, name, now)))
        return out

    def status(self, serial: str = SOUTH, connected: bool = True) -> tuple[str, str, BaseModel]:
        self.n += 1
        seen = datetime.now(UTC) + timedelta(microseconds=self.n)
        return (self.topics.status, serial, DeviceStatus(
            device_serial=serial, state=LinkState.LIVE if connected else LinkState.BACKOFF, connected=connected,
            last_seen=seen, records=900, records_capacity=1000, clock_offset_s=1.5, reported_at=seen))

    def alert(self, state: AlertState) -> tuple[str, str, BaseModel]:
        now = datetime.now(UTC)
        return (self.topics.alerts, f"device_offline:{SOUTH}", Alert(
            alert_id="inc-1", kind=AlertKind.DEVICE_OFFLINE, subject=SOUTH, state=state, message="offline",
            started_at=now, at=now))


async def running(settings: Settings) -> tuple[Monitor, str]:
    monitor = Monitor(settings)
    await monitor.start()
    return monitor, f"http://127.0.0.1:{settings.monitor.port}"


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s}s for {what}"
        await asyncio.sleep(0.05)


def identities(frames: list[Frame]) -> list[tuple[Any, ...]]:
    return [f.identity for f in frames]


def punch_ids(records: list[tuple[str, str, BaseModel]]) -> list[str]:
    return [str(m.event_id) for _, _, m in records if isinstance(m, LivePunch)]


def from_topics(frames: list[Frame]) -> list[Frame]:
    """Without push-device announcements (online/offline rows no topic carries, never replayed)."""
    return [f for f in frames if not (f.event == "device" and f.data["kind"] == "push")]


def test_a_reconnecting_client_gets_every_event_once_even_when_the_ring_is_too_small(
    settings_for: Callable[..., Settings], kafka_bootstrap: str, topics: Topics
) -> None:
    kafka = Kafka(kafka_bootstrap, topics)
    kafka.send(kafka.punches(10))  # history before the monitor starts

    async def scenario() -> None:
        monitor, base = await running(settings_for(ring_events=5))
        try:
            await until(lambda: monitor.feed is not None and monitor.feed.ring.head.live == 10, 15, "the history")
            async with aiohttp.ClientSession() as session:
                first = await Sse(session, base).open()
                batch1 = [*kafka.punches(8), kafka.status(), *kafka.punches(4), kafka.alert(AlertState.FIRING)]
                await asyncio.to_thread(kafka.send, batch1)
                got = from_topics(await first.take(7))[:6]  # NORTH's coming online is announced too
                first.close()  # killed mid-stream
                batch2 = [*kafka.punches(6), kafka.status(connected=False), kafka.alert(AlertState.RESOLVED)]
                await asyncio.to_thread(kafka.send, batch2)
                await until(lambda: monitor.feed is not None and monitor.feed.ring.head.live == 28, 15, "batch 2")
                last = got[-1].id
                assert monitor.feed is not None and monitor.feed.ring.gaps(parse_id(last))  # Kafka must fill in

                second = await Sse(session, base).open(last_id=last)
                rest = from_topics(await second.take(len(batch1) + len(batch2) - 6))
                assert await second.next(1.0) is None  # nothing more: no repeats
                assert len(got) == 6
                seen = identities(got + rest)
                assert len(seen) == len(set(seen)) == len(batch1) + len(batch2)
                assert [f.data["event_id"] for f in got + rest if f.event == "punch"] == punch_ids(batch1 + batch2)
                kinds = [f.event for f in got + rest]
                assert kinds.count("device") == 2 and kinds.count("alert") == 2

                # From the very start: the history too (read from Kafka), everything once.
                everyone = await Sse(session, base).open(query="?last_event_id=l0.s0.a0")
                every = from_topics(await everyone.take(10 + len(batch1) + len(batch2)))
                assert await everyone.next(1.0) is None
                assert len(set(identities(every))) == len(every) == 10 + len(batch1) + len(batch2)
                everyone.close()
                second.close()
                async with session.get(f"{base}/events", headers={"Last-Event-ID": "nonsense"}) as bad:
                    assert bad.status == 400
        finally:
            await monitor.stop()

    asyncio.run(scenario())


def read_raw(sock: socket.socket, timeout_s: float) -> str:
    """Everything the server sends until it closes (blocking)."""
    sock.settimeout(timeout_s)
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts).decode()


def raw_frames(body: str) -> list[Frame]:
    out = []
    for block in body.split("\r\n\r\n", 1)[1].split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            out.append(Frame(fields["event"], fields["id"], json.loads(fields["data"])))
    return out


def test_a_client_that_stops_reading_is_told_it_is_behind_while_a_fast_one_gets_everything_promptly(
    settings_for: Callable[..., Settings], kafka_bootstrap: str, topics: Topics
) -> None:
    kafka = Kafka(kafka_bootstrap, topics)
    count = 3000

    async def scenario() -> None:
        monitor, base = await running(settings_for(client_buffer=100, heartbeat_s=10.0))
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes stall
        try:
            await asyncio.to_thread(slow.connect, ("127.0.0.1", monitor.settings.monitor.port))
            await asyncio.to_thread(slow.sendall, b"GET /events HTTP/1.0\r\nHost: monitor\r\n\r\n")
            async with aiohttp.ClientSession() as session:
                fast = await Sse(session, base).open()
                await until(lambda: monitor.feed is not None and len(monitor.feed.clients) == 2, 10, "both clients")
                records = kafka.punches(count, name="A" * 400)  # ~1 KB events: megabytes in all
                await asyncio.to_thread(kafka.send, records)
                sent_at = time.monotonic()
                got = from_topics(await fast.take(count + 1, timeout_s=30))  # + NORTH coming online
                lag_s = time.monotonic() - sent_at
                assert [f.data["event_id"] for f in got] == punch_ids(records)
                assert lag_s < 10, f"the fast client took {lag_s:.1f}s after the last send"
                assert monitor.feed is not None
                await until(lambda: monitor.feed is not None and monitor.feed.metrics.behind._value.get() == 1,  # noqa: SLF001
                            10, "the slow client to be cut")
                frames = raw_frames(await asyncio.to_thread(read_raw, slow, 15.0))
                assert frames[-1].event == "behind"
                taken = [f.data["event_id"] for f in frames if f.event == "punch"]
                assert 0 < len(taken) < count and taken == punch_ids(records[:len(taken)])
                resume_id = frames[-1].data["last_event_id"]
                assert resume_id == frames[-2].id
                # It reconnects from there and gets exactly the rest.
                again = await Sse(session, base).open(last_id=resume_id)
                rest = await again.take(count - len(taken), timeout_s=30)
                assert [f.data["event_id"] for f in rest] == punch_ids(records[len(taken):])
                assert await again.next(0.5) is None
                metrics = await (await session.get(f"{base}/metrics")).text()
                assert "tapstream_sse_clients_behind_total 1.0" in metrics
                assert f'tapstream_monitor_events_in_total{{topic="live"}} {float(count)}' in metrics
                again.close()
                fast.close()
        finally:
            slow.close()
            await monitor.stop()

    asyncio.run(scenario())


def test_filters_by_site_and_device_and_the_snapshot(
    settings_for: Callable[..., Settings], kafka_bootstrap: str, topics: Topics
) -> None:
    kafka = Kafka(kafka_bootstrap, topics)

    async def scenario() -> None:
        monitor, base = await running(settings_for())
        try:
            async with aiohttp.ClientSession() as session:
                north = await Sse(session, base).open("?site=north")
                south = await Sse(session, base).open(f"?device={SOUTH}")
                both = await Sse(session, base).open(f"?site=north,south&device={NORTH}&device={SOUTH}")
                records = [*kafka.punches(3, NORTH), kafka.status(SOUTH), *kafka.punches(2, SOUTH),
                           kafka.alert(AlertState.FIRING)]
                await asyncio.to_thread(kafka.send, records)
                # north: its device coming online (its first punch), its 3 punches, the alert
                got_north = await north.take(5)
                assert sorted(f.event for f in got_north) == ["alert", "device", "punch", "punch", "punch"]
                assert all(f.data.get("site") == "north" for f in got_north if f.event != "alert")
                got_south = await south.take(4)
                assert sorted(f.event for f in got_south) == ["alert", "device", "punch", "punch"]
                [row] = [f.data for f in got_south if f.event == "device"]
                assert row["log_used_pct"] == 90.0 and row["name"] == "South gate" and row["online"]
                assert all(f.data.get("device_serial", f.data.get("serial")) == SOUTH
                           for f in got_south if f.event != "alert")
                got_both = await both.take(8)  # everything: NORTH's announcement, 5 punches, a status, the alert
                assert len(got_both) == 8
                for stream in (north, south, both):
                    assert await stream.next(0.5) is None
                    stream.close()

                snapshot = await (await session.get(f"{base}/api/snapshot")).json()
                assert monitor.feed is not None and snapshot["last_event_id"] == monitor.feed.ring.head.id()
                devices = {d["serial"]: d for d in snapshot["devices"]}
                assert devices[NORTH]["kind"] == "push" and devices[NORTH]["online"] and devices[NORTH]["site"] == "north"
                assert devices[SOUTH]["kind"] == "pull" and devices[SOUTH]["clock_offset_s"] == 1.5
                assert [a["alert_id"] for a in snapshot["alerts"]] == ["inc-1"]
                assert [p["event_id"] for p in snapshot["recent"]] == punch_ids(records)
                assert snapshot["recent"][0]["device_name"] == "North door"
                assert set(snapshot["today"]) == {"punches", "unmatched", "quarantined"}
                health = await (await session.get(f"{base}/healthz")).json()
                assert health["ok"] is True and health["registry"]["devices"] == 2
        finally:
            await monitor.stop()

    asyncio.run(scenario())


def test_punches_the_worker_stores_reach_an_sse_client_with_names_and_parked_ones_do_not(
    settings_for: Callable[..., Settings], make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema,
    topics: Topics,
) -> None:
    pipeline = make_pipeline(pg_schema.dsn, raw_partitions=2, TAPSTREAM_TOPICS__LIVE=topics.live)
    known = ["501", "502", "503"]
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(known))
    punches = raw_punches(NORTH, [*known, "999"], 12, datetime(2026, 12, 1, 8))  # 999: no employee, parked
    stored = [p for p in punches if p.user_code != "999"]
    worker = pipeline.start_worker()

    async def scenario() -> None:
        monitor, base = await running(settings_for())
        try:
            async with aiohttp.ClientSession() as session:
                stream = await Sse(session, base).open(f"?device={NORTH}")
                await asyncio.to_thread(produce, pipeline.bootstrap, pipeline.raw, punches)
                got = [f for f in await stream.take(len(stored) + 1, timeout_s=60) if f.event == "punch"]
                assert await stream.next(2.0) is None  # the parked punches never show
                stream.close()
        finally:
            await monitor.stop()
        assert sorted(f.data["event_id"] for f in got) == sorted(str(p.event_id) for p in stored)
        assert {f.data["employee_name"] for f in got} == {f"Employee {c}" for c in known}
        assert {(f.data["device_name"], f.data["site"]) for f in got} == {("North door", "north")}
        assert all(f.data["recorded_at"] >= f.data["received_at"] for f in got)

    asyncio.run(scenario())
    assert worker.stop() == 0
