"""Recent feed events in arrival order, with the positions a reconnecting client resumes from.

The feed merges three single-partition topics (``attendance.live``, ``devices.status``,
``alerts``). A position (``Cursor``) is the next offset to read of each; an SSE id spells it
``l<live>.s<status>.a<alerts>``. Each ring entry carries the cursor just after it (``after``):
every event of a topic below that offset arrived before it.

Resuming from a cursor means: every event whose own topic offset is >= the cursor's offset for
its topic. The ring holds each topic completely from ``base[topic]`` on; a cursor below a base
needs that span read from Kafka first (``gaps``), the rest comes from the ring.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

LIVE, STATUS, ALERTS = "l", "s", "a"
CODES = (LIVE, STATUS, ALERTS)
_FIELDS = {LIVE: "live", STATUS: "status", ALERTS: "alerts"}
_ID = re.compile(r"^l(\d+)\.s(\d+)\.a(\d+)$")


@dataclass(frozen=True)
class Cursor:
    """The next offset to read of each topic."""

    live: int = 0
    status: int = 0
    alerts: int = 0

    def of(self, code: str) -> int:
        value: int = getattr(self, _FIELDS[code])
        return value

    def at(self, code: str, offset: int) -> Cursor:
        """This cursor with ``code``'s offset set to ``offset``."""
        return Cursor(
            offset if code == LIVE else self.live,
            offset if code == STATUS else self.status,
            offset if code == ALERTS else self.alerts,
        )

    def past(self, code: str, offset: int) -> Cursor:
        """This cursor moved past the event at ``offset`` of ``code`` (never backwards)."""
        return self if offset < self.of(code) else self.at(code, offset + 1)

    def covers(self, other: Cursor) -> bool:
        """Every component at least ``other``'s."""
        return self.live >= other.live and self.status >= other.status and self.alerts >= other.alerts

    def union(self, other: Cursor) -> Cursor:
        """Component-wise maximum: everything below either has been taken."""
        # A following client's cursor is covered by the next entry's: reuse that cursor (and
        # its rendered id) instead of building one per client per event.
        if other.covers(self):
            return other
        if self.covers(other):
            return self
        return Cursor(max(self.live, other.live), max(self.status, other.status), max(self.alerts, other.alerts))

    def id(self) -> str:
        return self._id

    @cached_property
    def _id(self) -> str:  # cached_property writes the instance dict directly: fine when frozen
        return f"l{self.live}.s{self.status}.a{self.alerts}"


def parse_id(text: str) -> Cursor:
    """The cursor an SSE id names; ValueError when it is not one."""
    match = _ID.match(text.strip())
    if match is None:
        raise ValueError(f"not an event id: {text!r}")
    live, status, alerts = (int(g) for g in match.groups())
    return Cursor(live, status, alerts)


@dataclass(frozen=True)
class FeedEvent:
    """One event as clients get it: SSE type, JSON data, and what filters look at."""

    code: str  # which topic: LIVE, STATUS or ALERTS
    offset: int
    kind: str  # "punch" | "device" | "alert"
    data: str  # the JSON object, rendered once for every client
    serial: str = ""
    site: str = ""


@dataclass(frozen=True)
class Entry:
    seq: int
    event: FeedEvent
    after: Cursor


@dataclass
class Ring:
    """The newest ``capacity`` events; ``base``: from which offset each topic is complete."""

    capacity: int
    start: Cursor = field(default_factory=Cursor)
    entries: deque[Entry] = field(default_factory=deque)
    seq: int = 0  # sequence number of the newest entry (0: none yet)

    def __post_init__(self) -> None:
        self.head = self.start
        self.base = {code: self.start.of(code) for code in CODES}

    def append(self, event: FeedEvent) -> Entry:
        """Add an event (its topic offset must be past the head); evict the oldest beyond capacity."""
        self.head = self.head.past(event.code, event.offset)
        self.seq += 1
        entry = Entry(self.seq, event, self.head)
        self.entries.append(entry)
        while len(self.entries) > self.capacity:
            old = self.entries.popleft().event
            self.base[old.code] = max(self.base[old.code], old.offset + 1)
        return entry

    def skip(self, code: str, offset: int) -> None:
        """A message of the topic that is no event (undecodable): the head moves past it."""
        self.head = self.head.past(code, offset)

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest entry held (seq + 1 when empty)."""
        return self.entries[0].seq if self.entries else self.seq + 1

    def lost(self, seq: int) -> bool:
        """True when entries newer than ``seq`` were evicted: a reader there missed some."""
        return seq < self.first_seq - 1

    def gaps(self, cursor: Cursor) -> dict[str, tuple[int, int]]:
        """Per topic, the [start, end) span a client at ``cursor`` needs that the ring no longer holds."""
        return {code: (cursor.of(code), self.base[code]) for code in CODES if cursor.of(code) < self.base[code]}

    def since(self, seq: int, limit: int | None = None) -> list[Entry]:
        """Entries newer than ``seq`` (at most ``limit``), oldest first."""
        if not self.entries or seq >= self.seq:
            return []
        skip = max(0, seq - self.entries[0].seq + 1)
        out: list[Entry] = []
        for i in range(skip, len(self.entries)):
            out.append(self.entries[i])
            if limit is not None and len(out) >= limit:
                break
        return out

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


@dataclass(frozen=True)
class Filter:
    """Which punches and device events a client wants (empty = all); alerts always pass."""

    sites: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()

    def passes(self, event: FeedEvent) -> bool:
        if event.kind == "alert":
            return True
        if self.sites and event.site not in self.sites:
            return False
        return not self.devices or event.serial in self.devices


def parse_filter(query: Any) -> Filter:
    """The filter of an /events query: ``site=`` and ``device=``, repeatable or comma-separated."""
    def values(name: str) -> frozenset[str]:
        out: set[str] = set()
        for value in query.getall(name, []):
            out.update(v.strip() for v in str(value).split(",") if v.strip())
        return frozenset(out)

    return Filter(values("site"), values("device"))


class Resume:
    """Where one client stands: what it has taken (``cursor``) and the ring entries it has seen.

    A client starts at ``cursor`` (taken: every event below it); ``take`` decides for each
    event whether it is new to the client, and moves the cursor past it either way.
    """

    def __init__(self, cursor: Cursor, seq: int) -> None:
        self.cursor = cursor
        self.seq = seq  # the newest ring entry this client has been through

    def take_backfill(self, event: FeedEvent) -> bool:
        """An event read from Kafka (older than the ring): True when the client lacks it."""
        new = event.offset >= self.cursor.of(event.code)
        self.cursor = self.cursor.past(event.code, event.offset)
        return new

    def take(self, entry: Entry) -> bool:
        """A ring entry: True when the client lacks it."""
        new = entry.event.offset >= self.cursor.of(entry.event.code)
        self.cursor = self.cursor.union(entry.after)
        self.seq = entry.seq
        return new


def start_seq(ring: Ring, cursor: Cursor) -> int:
    """The ring position a client at ``cursor`` (with no gap) reads after: the entry before the
    first one it lacks, so nothing it lacks is skipped."""
    for entry in ring:
        if entry.event.offset >= cursor.of(entry.event.code):
            return entry.seq - 1
    return ring.seq
