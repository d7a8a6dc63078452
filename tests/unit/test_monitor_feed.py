"""The monitor's ring, resume positions, filters and slow-client handling, without Kafka or sockets."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from multidict import MultiDict
from prometheus_client import CollectorRegistry

from monitor.feed import Decoded, Feed, FeedMetrics
from monitor.ring import ALERTS, LIVE, STATUS, Cursor, FeedEvent, Filter, Resume, Ring, parse_filter, parse_id, start_seq
from monitor.sse import Conn, _has_room, stream_events
from monitor.views import DeviceBoard
from producers.registry import DeviceInfo
from schemas.device_status import DeviceStatus, LinkState
from schemas.live import live_punch
from tests.factories import enriched

SITES = {"SN-A": "north", "SN-B": "south"}


def event(code: str, offset: int, serial: str = "SN-A") -> FeedEvent:
    kind = {LIVE: "punch", STATUS: "device", ALERTS: "alert"}[code]
    return FeedEvent(code, offset, kind, f'{{"n":"{code}{offset}"}}', serial, SITES.get(serial, ""))


def merged(count: int, seed: int, start: Cursor = Cursor()) -> list[FeedEvent]:
    """``count`` events of the three topics interleaved at random, offsets rising per topic."""
    rng = random.Random(seed)
    nxt = {LIVE: start.live, STATUS: start.status, ALERTS: start.alerts}
    out = []
    for _ in range(count):
        code = rng.choice([LIVE, LIVE, LIVE, STATUS, ALERTS])
        out.append(event(code, nxt[code], rng.choice(["SN-A", "SN-B"])))
        nxt[code] += rng.choice([1, 1, 1, 3])  # compaction leaves holes in devices.status
    return out


def resume(ring: Ring, log: list[FeedEvent], cursor: Cursor) -> list[FeedEvent]:
    """What the server sends a client at ``cursor``: the gaps read from the log, then the ring."""
    client = Resume(cursor, ring.seq)
    out = []
    for code, (start, end) in ring.gaps(client.cursor).items():
        for e in log:
            if e.code == code and start <= e.offset < end and client.take_backfill(e):
                out.append(e)
        client.cursor = client.cursor.union(Cursor().at(code, end))
    client.seq = start_seq(ring, client.cursor)
    out += [entry.event for entry in ring.since(client.seq) if client.take(entry)]
    return out


def test_an_id_names_the_next_offset_of_each_topic() -> None:
    cursor = Cursor(live=123, status=45, alerts=6)
    assert cursor.id() == "l123.s45.a6"
    assert parse_id("l123.s45.a6") == cursor
    for bad in ("", "l1.s2", "x1.s2.a3", "l-1.s2.a3", "l1.s2.a3.b4"):
        with pytest.raises(ValueError):
            parse_id(bad)


@pytest.mark.parametrize(("a", "b", "union"), [
    (Cursor(1, 2, 3), Cursor(1, 2, 4), Cursor(1, 2, 4)),
    (Cursor(5, 2, 3), Cursor(1, 2, 3), Cursor(5, 2, 3)),
    (Cursor(5, 0, 3), Cursor(1, 9, 3), Cursor(5, 9, 3)),  # neither covers the other
    (Cursor(), Cursor(), Cursor()),
])
def test_a_union_is_the_componentwise_maximum_whichever_side_covers(a: Cursor, b: Cursor, union: Cursor) -> None:
    assert a.union(b) == b.union(a) == union
    assert union.id() == f"l{union.live}.s{union.status}.a{union.alerts}"


def test_each_entry_carries_the_position_just_after_it() -> None:
    ring = Ring(10, Cursor(100, 7, 0))
    ring.append(event(LIVE, 100))
    ring.append(event(STATUS, 9))
    ring.append(event(LIVE, 101))
    assert [e.after.id() for e in ring] == ["l101.s7.a0", "l101.s10.a0", "l102.s10.a0"]
    assert ring.head.id() == "l102.s10.a0"


@pytest.mark.parametrize("capacity", [1000, 17, 3])
def test_a_client_resuming_from_any_id_gets_every_later_event_exactly_once(capacity: int) -> None:
    log = merged(120, seed=capacity)
    ring = Ring(capacity)
    sent_ids = []
    for e in log:
        sent_ids.append(ring.append(e).after)
    for k, cursor in enumerate(sent_ids):  # the client got the first k+1 events, then dropped
        assert_same(resume(ring, log, cursor), log[k + 1:])
    assert_same(resume(ring, log, Cursor()), log)  # from the very beginning


def assert_same(got: list[FeedEvent], expected: list[FeedEvent]) -> None:
    """The same events, each once, each topic in its order (a span read from Kafka comes topic by topic)."""
    assert len(got) == len(expected)
    for code in (LIVE, STATUS, ALERTS):
        assert [e for e in got if e.code == code] == [e for e in expected if e.code == code]


def test_ids_given_during_a_resume_resume_without_gap_or_repeat() -> None:
    """A client cut again while catching up resumes from the id of the last event it got."""
    log = merged(80, seed=5)
    ring = Ring(10)
    for e in log:
        ring.append(e)
    client = Resume(Cursor(), ring.seq)
    got: list[tuple[FeedEvent, Cursor]] = []
    for code, (start, end) in ring.gaps(client.cursor).items():
        for e in log:
            if e.code == code and start <= e.offset < end and client.take_backfill(e):
                got.append((e, client.cursor))
        client.cursor = client.cursor.union(Cursor().at(code, end))
    for cut in range(len(got)):
        seen = [e for e, _ in got[:cut + 1]]
        assert_same(seen + resume(ring, log, got[cut][1]), log)


def test_gaps_name_exactly_what_the_ring_evicted() -> None:
    ring = Ring(2, Cursor(10, 0, 0))
    for e in [event(LIVE, 10), event(STATUS, 0), event(LIVE, 11), event(LIVE, 12)]:
        ring.append(e)
    assert ring.gaps(Cursor(10, 0, 0)) == {LIVE: (10, 11), STATUS: (0, 1)}
    assert ring.gaps(Cursor(11, 1, 0)) == {}
    assert ring.lost(ring.first_seq - 2) and not ring.lost(ring.first_seq - 1)


def test_filters_select_punches_and_devices_by_site_or_serial_and_let_alerts_through() -> None:
    query = MultiDict([("site", "north,east"), ("site", "west"), ("device", " SN-B ")])
    flt = parse_filter(query)
    assert flt == Filter(frozenset({"north", "east", "west"}), frozenset({"SN-B"}))
    assert parse_filter(MultiDict()) == Filter()
    by_site = Filter(sites=frozenset({"north"}))
    assert by_site.passes(event(LIVE, 0, "SN-A")) and not by_site.passes(event(LIVE, 0, "SN-B"))
    assert not by_site.passes(event(STATUS, 0, "SN-B"))
    assert by_site.passes(event(ALERTS, 0, "SN-B"))
    by_device = Filter(devices=frozenset({"SN-B"}))
    assert by_device.passes(event(STATUS, 0, "SN-B")) and not by_device.passes(event(LIVE, 0, "SN-A"))


# --- the feed and its client streams -------------------------------------------------------------

def registry() -> dict[str, DeviceInfo]:
    return {
        "SN-A": DeviceInfo("SN-A", "Front door", "push", "UTC", "north", True),
        "SN-B": DeviceInfo("SN-B", "Warehouse", "pull", "UTC", "south", True, address="10.0.0.2"),
    }


def make_feed(ring_events: int = 1000, client_buffer: int = 5) -> Feed:
    devices = registry()
    board = DeviceBoard(devices.get, lambda: devices, offline_after_s=600)
    return Feed(Ring(ring_events), board, client_buffer, FeedMetrics(CollectorRegistry()))


def punches(start: int, count: int, serial: str = "SN-A") -> list[Decoded]:
    now = datetime.now(UTC)
    return [(LIVE, start + n, live_punch(enriched(start + n, serial=serial, received_at=now), "Ada", now))
            for n in range(count)]


def status(offset: int, serial: str = "SN-B", connected: bool = True) -> Decoded:
    return (STATUS, offset, DeviceStatus(device_serial=serial, state=LinkState.LIVE, connected=connected,
                                         records=50, records_capacity=200, reported_at=datetime.now(UTC)))


class FakeTransport:
    """A socket's buffer: empty for a client that reads, full for one that does not."""

    aborted = False
    HIGH = 65536

    def __init__(self, buffered: int = 0, closing: bool = False) -> None:
        self.buffered, self.closing = buffered, closing

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.HIGH // 4, self.HIGH

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeRequest:
    def __init__(self, transport: FakeTransport | None = None) -> None:
        self.transport = transport or FakeTransport()


class FakeResponse:
    """Collects what the stream writes; ``stuck`` makes every write wait (a client not reading)."""

    def __init__(self, stuck: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.stuck = asyncio.Event() if stuck else None
        self.eof = False

    async def write(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.stuck is not None:
            await self.stuck.wait()

    async def write_eof(self) -> None:
        if self.stuck is not None:
            await self.stuck.wait()
        self.eof = True

    def frames(self) -> list[dict[str, str]]:
        text = b"".join(self.chunks).decode()
        out = []
        for block in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
            if fields:
                out.append(fields)
        return out


async def no_spans(spans: dict[str, tuple[int, int]]) -> list[Decoded]:
    raise AssertionError(f"no Kafka read expected, asked for {spans}")


def start_stream(feed: Feed, resp: FakeResponse, flt: Filter = Filter(), cursor: Cursor | None = None,
                 spans: Any = no_spans) -> asyncio.Task[None]:
    request = FakeRequest(FakeTransport(buffered=FakeTransport.HIGH if resp.stuck else 0))
    return asyncio.ensure_future(stream_events(
        feed, request, resp, flt, cursor, spans, heartbeat_s=0.5, stall_s=0.2,  # type: ignore[arg-type]  # fakes
    ))


@pytest.mark.parametrize(("buffered", "closing", "size", "room"), [
    (0, False, 20_000, True),  # a client that reads: written straight away
    (60_000, False, 20_000, False),  # the write would pause the transport: watched
    (0, True, 10, False),  # a closing connection: the watched path reports it
    (0, False, 70_000, False),  # a chunk bigger than the buffer: watched
])
def test_a_write_skips_the_watch_only_when_the_socket_buffer_has_room(
        buffered: int, closing: bool, size: int, room: bool) -> None:
    conn = Conn(FakeRequest(FakeTransport(buffered, closing)), FakeResponse())  # type: ignore[arg-type]  # fakes
    assert _has_room(conn, size) is room


def test_a_stuck_client_is_told_it_is_behind_while_a_fast_one_gets_everything() -> None:
    async def scenario() -> tuple[FakeResponse, FakeResponse, Feed]:
        feed = make_feed(client_buffer=5)
        fast, slow = FakeResponse(), FakeResponse(stuck=True)
        fast_task, slow_task = start_stream(feed, fast), start_stream(feed, slow)
        await asyncio.sleep(0.01)
        for n in range(0, 40, 2):  # small batches, as the source delivers them
            feed.ingest(punches(n, 2))
            await asyncio.sleep(0.001)
        await asyncio.wait_for(slow_task, 3.0)  # cut: its stream ended though it never read
        await asyncio.sleep(0.05)
        fast_task.cancel()
        return fast, slow, feed

    fast, slow, feed = asyncio.run(scenario())
    got = [f for f in fast.frames() if f["event"] == "punch"]
    assert len(got) == 40 and got[-1]["id"] == "l40.s0.a0"
    slow_frames = slow.frames()
    assert slow_frames[-1]["event"] == "behind"
    assert len([f for f in slow_frames if f["event"] == "punch"]) < 40
    last = [f["id"] for f in slow_frames if f["event"] == "punch"][-1]
    assert f'"last_event_id":"{last}"' in slow_frames[-1]["data"]
    assert feed.metrics.behind._value.get() == 1  # noqa: SLF001 — prometheus_client's own value
    assert not feed.clients


def test_a_burst_bigger_than_the_buffer_does_not_cut_a_client_that_keeps_up() -> None:
    async def scenario() -> FakeResponse:
        feed = make_feed(client_buffer=5)
        resp = FakeResponse()
        task = start_stream(feed, resp)
        await asyncio.sleep(0.01)
        feed.ingest(punches(0, 50))
        await asyncio.sleep(0.05)
        task.cancel()
        return resp

    resp = asyncio.run(scenario())
    frames = resp.frames()
    assert [f["event"] for f in frames if f["event"] != "device"] == ["punch"] * 50
    # and SN-A, a push device, came online with its first punch: announced once
    assert [f["data"] for f in frames if f["event"] == "device"] == [frames[0]["data"]]
    assert '"serial":"SN-A"' in frames[0]["data"] and '"online":true' in frames[0]["data"]


def test_a_stream_resumes_from_its_id_reading_the_evicted_span_and_applies_filters() -> None:
    log = punches(0, 6, "SN-A") + [status(0)] + punches(6, 6, "SN-B") + [status(3, "SN-A")]
    asked: list[dict[str, tuple[int, int]]] = []

    async def spans(wanted: dict[str, tuple[int, int]]) -> list[Decoded]:
        asked.append(wanted)
        return [d for d in log if d[0] in wanted and wanted[d[0]][0] <= d[1] < wanted[d[0]][1]]

    async def scenario(flt: Filter) -> FakeResponse:
        feed = make_feed(ring_events=4, client_buffer=100)
        feed.ingest(log)
        resp = FakeResponse()
        task = start_stream(feed, resp, flt, parse_id("l2.s0.a0"), spans)
        await asyncio.sleep(0.05)
        feed.ingest(punches(12, 1, "SN-B"))
        await asyncio.sleep(0.05)
        task.cancel()
        return resp

    everything = asyncio.run(scenario(Filter()))
    assert asked[0] == {LIVE: (2, 9), STATUS: (0, 1)}  # the ring holds l9-11 and s3
    ids = [(f["event"], f["id"]) for f in everything.frames()]
    live_ids = [i for kind, i in ids if kind == "punch"]
    assert len(live_ids) == 11 and len(set(live_ids)) == 11  # offsets 2..12, each once
    assert [kind for kind, _ in ids].count("device") == 2
    south = asyncio.run(scenario(Filter(sites=frozenset({"south"}))))
    kinds = [(f["event"], f["data"]) for f in south.frames()]
    assert all('"site":"south"' in data for _, data in kinds)
    assert [k for k, _ in kinds] == ["device"] + ["punch"] * 7  # SN-B's status, its 6 punches and the new one


def test_push_devices_come_online_with_their_punches_and_pull_devices_from_their_status() -> None:
    feed = make_feed()

    async def scenario() -> None:
        feed.ingest([status(0), *punches(0, 1, "SN-A")])

    asyncio.run(scenario())
    rows = {row["serial"]: row for row in feed.board.rows(datetime.now(UTC))}
    assert rows["SN-A"]["kind"] == "push" and rows["SN-A"]["online"] and rows["SN-A"]["state"] == "receiving"
    assert rows["SN-A"]["name"] == "Front door" and rows["SN-A"]["site"] == "north"
    assert rows["SN-B"]["online"] and rows["SN-B"]["log_used_pct"] == 25.0 and rows["SN-B"]["name"] == "Warehouse"
    assert len(feed.recent) == 1
