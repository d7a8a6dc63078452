"""One /events stream: catch the client up from its id, then follow the ring until it leaves.

A client with an id first gets what the ring no longer holds, read from Kafka for it alone
(``read_spans``), then the ring from the first entry it lacks: no gap, nothing twice (the same
when a burst bigger than the ring evicts entries a client has not taken yet). Every
event carries the client's cursor after it as its SSE ``id``. Events are written in chunks
(one write per wake-up). A client whose socket has not taken a write for ``stall_s`` while
more than ``client_buffer`` events wait for it gets ``behind`` and is closed; it resumes by
reconnecting. A burst bigger than the buffer does not cut a client that keeps reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from monitor.feed import Client, Decoded, Feed, render
from monitor.ring import Cursor, FeedEvent, Filter, start_seq
from monitor.views import dumps

logger = logging.getLogger(__name__)

SpanReader = Callable[[dict[str, tuple[int, int]]], Awaitable[list[Decoded]]]
CHUNK_EVENTS = 1000  # ring entries looked at per write at most
BACKFILL_ROUNDS = 5  # the ring evicts while a gap is read: read the new gap, a few times at most
KEEPALIVE = b": keepalive\n\n"
STALL_S = 1.0  # a write not taken for this long, with client_buffer events waiting: behind
CHECK_S = 0.1  # how often a pending write looks at how far behind its client is
CHUNK_FRAMING = 64  # bytes a write adds around the chunk (chunked transfer encoding), at most


@dataclass(frozen=True)
class Conn:
    """Where a stream writes: the response, and the request whose connection can be cut."""

    request: web.Request
    resp: web.StreamResponse


def frame(kind: str, data: str, cursor: Cursor) -> str:
    """One SSE event."""
    return f"id: {cursor.id()}\nevent: {kind}\ndata: {data}\n\n"


async def stream_events(
    feed: Feed, request: web.Request, resp: web.StreamResponse, flt: Filter, cursor: Cursor | None,
    read_spans: SpanReader, heartbeat_s: float, stall_s: float = STALL_S,
) -> None:
    """Serve one prepared SSE response until the client leaves or falls behind."""
    client = feed.attach(cursor)
    conn = Conn(request, resp)
    try:
        if cursor is not None and not await _catch_up(feed, client, flt, conn, read_spans):
            return
        await _follow(feed, client, flt, conn, read_spans, heartbeat_s, stall_s)
    except ConnectionResetError:  # the client went away (aiohttp's reset error derives from it)
        pass
    finally:
        feed.detach(client)


async def _catch_up(feed: Feed, client: Client, flt: Filter, conn: Conn, read: SpanReader) -> bool:
    """Send what the ring no longer holds, then place the client in the ring; False when the
    gap could not be read (the stream is closed)."""
    for _ in range(BACKFILL_ROUNDS):
        gaps = feed.ring.gaps(client.resume.cursor)
        if not gaps:
            client.resume.seq = start_seq(feed.ring, client.resume.cursor)
            return True
        try:
            decoded = await read(gaps)
        except Exception as exc:  # Kafka away: close; the client retries with the same id
            logger.warning("cannot read %s for a resuming client: %s", gaps, exc)
            return False
        out = []
        for message in decoded:
            event = render(message, feed.board)
            if event is not None and client.resume.take_backfill(event) and flt.passes(event):
                out.append(frame(event.kind, event.data, client.resume.cursor))
        for code, (_start, end) in gaps.items():  # read to the end, compacted holes included
            client.resume.cursor = client.resume.cursor.union(Cursor().at(code, end))
        if out:
            await conn.resp.write("".join(out).encode())
            feed.metrics.sent.inc(len(out))
    logger.warning("a resuming client could not catch up with the ring; closing it")
    await _behind(feed, client, conn, 1.0)
    return False


async def _follow(feed: Feed, client: Client, flt: Filter, conn: Conn, read: SpanReader, heartbeat_s: float,
                  stall_s: float) -> None:
    resp = conn.resp
    while True:
        # A burst bigger than the ring evicted entries before this client took them: from Kafka.
        if feed.ring.lost(client.resume.seq) and not await _catch_up(feed, client, flt, conn, read):
            return
        out, looked = _pending(feed, client, flt)
        if out:
            taken = await _write(conn, "".join(out).encode(), lambda: feed.is_behind(client), stall_s)
            feed.metrics.sent.inc(len(out))
            if not taken:
                await _behind(feed, client, conn, heartbeat_s)
                return
            continue
        if looked:
            continue  # everything filtered out; there may be more
        changed = feed.changed()
        try:
            await asyncio.wait_for(changed.wait(), heartbeat_s)
        except TimeoutError:
            await resp.write(KEEPALIVE)


def _pending(feed: Feed, client: Client, flt: Filter) -> tuple[list[str], bool]:
    """Frames of what the client lacks and wants (announcements first); whether ring entries were looked at."""
    out = []
    while client.transient:
        event: FeedEvent = client.transient.popleft()
        if flt.passes(event):
            out.append(frame(event.kind, event.data, client.resume.cursor))
    entries = feed.ring.since(client.resume.seq, CHUNK_EVENTS)
    for entry in entries:
        if client.resume.take(entry) and flt.passes(entry.event):
            out.append(frame(entry.event.kind, entry.event.data, client.resume.cursor))
    return out, bool(entries)


async def _write(conn: Conn, chunk: bytes, behind: Callable[[], bool], stall_s: float) -> bool:
    """Write ``chunk``; False when, still not taken after ``stall_s``, the client is ``behind()``."""
    if _has_room(conn, len(chunk)):
        # The socket buffer stays below its high-water mark, so the write cannot wait for the
        # client: skip the watched task (a task and a timer per client per wake-up add up).
        await conn.resp.write(chunk)
        return True
    write = asyncio.ensure_future(conn.resp.write(chunk))
    waited = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({write}, timeout=CHECK_S)
            if done:
                write.result()
                return True
            waited += CHECK_S
            if waited >= stall_s and behind():
                return False
    finally:
        write.cancel()  # when cut: the bytes are in the transport's buffer; only the wait for room ends


def _has_room(conn: Conn, size: int) -> bool:
    transport = conn.request.transport
    if transport is None or transport.is_closing():
        return False
    _low, high = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size() + size + CHUNK_FRAMING < high


async def _behind(feed: Feed, client: Client, conn: Conn, grace_s: float) -> None:
    """Tell the client where to resume from and close its stream (cut it if it takes nothing)."""
    feed.metrics.behind.inc()
    cursor = client.resume.cursor
    notice = dumps({
        "message": f"more than {feed.client_buffer} events behind: reconnect to resume",
        "last_event_id": cursor.id(),
    })
    try:
        await asyncio.wait_for(conn.resp.write(frame("behind", notice, cursor).encode()), grace_s)
        await asyncio.wait_for(conn.resp.write_eof(), grace_s)
    except (TimeoutError, ConnectionResetError):
        # It takes nothing: cut the connection rather than hold its buffers forever.
        transport = conn.request.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()
