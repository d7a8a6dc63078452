"""SSE readers for `tapstream bench live`: the client process.

The client process (``python -m infra.bench_live_sse``) holds many
readers in one event loop:

* normal clients (aiohttp) keep what they read raw, each chunk with its arrival time, and the
  process parses it all once the load is over: parsing 100 streams during it made the readers
  a quarter of the machine's CPU, taken from the pipeline under test, and stamped a chunk late
  by the parsing of every client read before it. Afterwards, per punch of the tap plan: the
  arrival time minus the tap time; the first client of each process also splits each latency
  into stages (received_at and recorded_at of the punch). On ``behind`` or a closed stream a
  client parses just that connection for its last SSE id and resumes from it, as EventSource
  does;
* slow clients read a few hundred bytes at a time through a tiny socket buffer, with sleeps,
  and reconnect when the server gives up on them: the load a pipeline must shrug off.

Protocol with the bench, over stdin/stdout: the process prints ``ready`` once every client has
its response headers; the line ``plan PATH DEADLINE`` hands it the tap plan (a JSON file
``[[event_id, tap_epoch_s], ...]``) and the epoch second to give up at; it prints one JSON result
line when stdin says ``stop`` (or closes), or once every normal client has every planned punch,
or at the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from infra.bench_live_plan import STAGES, Histogram, merge, stage_latencies
from monitor.sse_reader import SseEvent, SseParser

logger = logging.getLogger(__name__)

PUNCH_MARK = b"\nevent: punch\n"  # counted in raw chunks: when has a client read the whole plan?
BEHIND_MARK = b"event: behind"
SLOW_READ_BYTES = 256
SLOW_SLEEP_S = 0.2
SLOW_RCVBUF = 4096
RECONNECT_S = 1.0


@dataclass
class Tally:
    """What one normal client saw of the plan: firsts arrivals as latencies, repeats, behinds."""

    planned: int
    probe: bool = False  # also split each latency into STAGES (a full JSON parse per punch)
    seen: bytearray = field(init=False)
    received: int = 0
    duplicates: int = 0
    other: int = 0  # punches not in the plan (the warm-up)
    behind: int = 0
    reconnects: int = 0
    hist: Histogram = field(default_factory=Histogram)
    stages: dict[str, Histogram] = field(default_factory=lambda: {name: Histogram() for name in STAGES})
    connections: list[list[tuple[float, bytes]]] = field(default_factory=list)  # raw: (arrival, chunk)
    marks: int = 0  # punch events counted in the raw chunks so far (repeats included)

    def __post_init__(self) -> None:
        self.seen = bytearray(self.planned)

    @property
    def complete(self) -> bool:
        return self.received >= self.planned

    @property
    def read_enough(self) -> bool:
        """During the load: as many punch events read as planned (the parse afterwards tells)."""
        return self.marks >= self.planned

    def punch(self, index: int | None, latency_ms: float) -> bool:
        """Count one punch; True when it is a planned punch seen for the first time."""
        if index is None:
            self.other += 1
        elif self.seen[index]:
            self.duplicates += 1
        else:
            self.seen[index] = 1
            self.received += 1
            self.hist[int(latency_ms // 1)] += 1
            return True
        return False

    def summary(self) -> dict[str, Any]:
        return {"received": self.received, "missing": self.planned - self.received, "duplicates": self.duplicates,
                "other": self.other, "behind": self.behind, "reconnects": self.reconnects}


class Plan:
    """event id -> (index, tap time) of every planned punch; empty until ``load``."""

    def __init__(self, size: int = 0) -> None:
        self.index: dict[str, tuple[int, float]] = {}
        self.size = size
        self.deadline = float("inf")

    def __len__(self) -> int:
        return self.size

    def load(self, rows: list[tuple[str, float]], deadline: float) -> None:
        self.index = {event_id: (i, at) for i, (event_id, at) in enumerate(rows)}
        self.deadline = deadline

    def record(self, tally: Tally, data: str, now: float) -> None:
        """Count a punch event's ``data`` (JSON with event_id) arriving at ``now`` (epoch s)."""
        found = self.index.get(_event_id(data))
        if found is None:
            tally.punch(None, 0.0)
        elif tally.punch(found[0], (now - found[1]) * 1000) and tally.probe:
            for name, ms in stage_latencies(json.loads(data), found[1], now).items():
                tally.stages[name][int(ms // 1)] += 1


def _event_id(data: str) -> str:
    # The id sits near the start of the object; a full json.loads per event per client is what
    # would make the readers, not the server, the bottleneck.
    at = data.find('"event_id"')
    if at < 0:
        return ""
    start = data.find('"', data.find(":", at) + 1) + 1
    return data[start:data.find('"', start)]


async def normal_client(url: str, tally: Tally, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """Read /events until ``stop``, keeping each chunk raw; resume from the last id after ``behind`` or a drop."""
    last_id: str | None = None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            headers = {"Last-Event-ID": last_id} if last_id else {}
            chunks: list[tuple[float, bytes]] = []
            tally.connections.append(chunks)
            try:
                async with session.get(url, headers=headers) as response:
                    ready.set()
                    tail = b""
                    async for chunk in response.content.iter_any():
                        chunks.append((time.time(), chunk))
                        found, tail = count_marks(PUNCH_MARK, tail, chunk)
                        tally.marks += found
                        if stop.is_set():
                            return
            except (aiohttp.ClientError, OSError) as exc:
                logger.warning("client: %s", exc)
            last_id = last_event_id(chunks) or last_id
            tally.reconnects += 1
            await asyncio.sleep(RECONNECT_S)


def count_marks(mark: bytes, tail: bytes, chunk: bytes) -> tuple[int, bytes]:
    """How many ``mark``s end in ``chunk`` (``tail``: what came before it), and the next tail.

    The tail is one byte shorter than the mark, so a mark split across chunks counts once."""
    data = tail + chunk
    return data.count(mark), data[1 - len(mark):]


def connection_events(chunks: list[tuple[float, bytes]]) -> Iterator[tuple[float, SseEvent]]:
    """The events of one connection's raw chunks, each with the arrival of the chunk that completed it."""
    parser = SseParser()
    for at, chunk in chunks:
        for event in parser.feed(chunk):
            yield at, event


def last_event_id(chunks: list[tuple[float, bytes]]) -> str | None:
    """The id of the last event of one connection's chunks."""
    last = None
    for _at, event in connection_events(chunks):
        last = event.id or last
    return last


def tally_connections(plan: Plan, tally: Tally) -> None:
    """Parse what the client read, once the load is over: each punch at its chunk's arrival time."""
    for chunks in tally.connections:
        for at, event in connection_events(chunks):
            if event.type == "punch":
                plan.record(tally, event.data, at)
            elif event.type == "behind":
                tally.behind += 1
    tally.connections = []


async def slow_client(host: str, port: int, path: str, counts: dict[str, int], ready: asyncio.Event,
                      stop: asyncio.Event) -> None:
    """Read the stream a few hundred bytes at a time through a tiny receive buffer."""
    while not stop.is_set():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=SLOW_READ_BYTES)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            ready.set()
            tail = b""
            while not stop.is_set():
                chunk = await reader.read(SLOW_READ_BYTES)
                if not chunk:
                    break
                counts["bytes"] += len(chunk)
                found, tail = count_marks(BEHIND_MARK, tail, chunk)
                counts["behind"] += found
                await asyncio.sleep(SLOW_SLEEP_S)
            writer.close()
        except OSError as exc:
            logger.warning("slow client: %s", exc)
            sock.close()
        counts["reconnects"] += 1
        await asyncio.sleep(RECONNECT_S)


async def run_clients(url: str, plan: Plan, normal: int, slow: int) -> dict[str, Any]:
    """Connect every client, say ``ready``, read until stop/complete/deadline; the result."""
    stop = asyncio.Event()
    tallies = [Tally(len(plan), probe=i == 0) for i in range(normal)]
    slow_counts = [{"bytes": 0, "behind": 0, "reconnects": 0} for _ in range(slow)]
    readies = [asyncio.Event() for _ in range(normal + slow)]
    parsed = URL(url)
    tasks = [asyncio.create_task(normal_client(url, t, r, stop)) for t, r in zip(tallies, readies)]
    tasks += [asyncio.create_task(slow_client(parsed.host or "127.0.0.1", parsed.port or 80, parsed.path_qs, c, r, stop))
              for c, r in zip(slow_counts, readies[normal:])]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    print("ready", flush=True)
    told = _stdin_commands(plan)
    while time.time() < plan.deadline and not told.is_set():
        if plan.index and tallies and all(t.read_enough for t in tallies):
            break
        await asyncio.sleep(0.2)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for tally in tallies:
        tally_connections(plan, tally)
    return {"clients": [t.summary() for t in tallies], "slow": slow_counts,
            "hist": {str(k): v for k, v in merge(t.hist for t in tallies).items()},
            "stages": {name: {str(k): v for k, v in tallies[0].stages[name].items()} for name in STAGES} if tallies else {}}


def _stdin_commands(plan: Plan) -> threading.Event:
    """Follow stdin in a daemon thread (never awaited at exit): ``plan PATH DEADLINE`` loads the
    plan; ``stop`` or end of input sets the returned event."""
    told = threading.Event()

    def follow() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["plan"]:
                rows = [(str(e), float(t)) for e, t in json.loads(Path(words[1]).read_text())]
                plan.load(rows, float(words[2]))  # one assignment each: safe for the loop's readers
            elif words[:1] == ["stop"]:
                break
        told.set()

    threading.Thread(target=follow, name="stdin", daemon=True).start()
    return told


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    args.add_argument("url")
    args.add_argument("--planned", type=int, default=0, help="punches the plan will hold")
    args.add_argument("--clients", type=int, default=0)
    args.add_argument("--slow", type=int, default=0)
    ns = args.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(run_clients(ns.url, Plan(ns.planned), ns.clients, ns.slow))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
