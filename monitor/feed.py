"""The monitor's state on the event loop: the ring, the device board, open alerts, the clients.

``Feed.ingest`` takes decoded topic messages (from monitor.source, in topic order), renders
each once into a ``FeedEvent``, appends it to the ring, updates the board and wakes the client
streams (monitor.sse). It never waits on a client: each stream reads the ring at its own pace,
and one whose connection stops taking writes while more than ``client_buffer`` events wait for
it is cut by its own stream (``is_behind``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel

from monitor.ring import ALERTS, LIVE, STATUS, Cursor, FeedEvent, Resume, Ring
from monitor.views import DeviceBoard, alert_data, dumps, punch_data, pull_row
from schemas.alert import Alert, AlertState
from schemas.device_status import DeviceStatus
from schemas.live import LivePunch

RECENT_PUNCHES = 50
TOPIC_LABELS = {LIVE: "live", STATUS: "device_status", ALERTS: "alerts"}
# (topic code, offset, the decoded contract or None when the message was not one)
Decoded = tuple[str, int, BaseModel | None]


class FeedMetrics:
    """The monitor's own Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.clients = Gauge("tapstream_sse_clients", "SSE clients connected to /events", registry=registry)
        self.sent = Counter("tapstream_sse_events_sent_total", "events written to SSE clients", registry=registry)
        self.behind = Counter("tapstream_sse_clients_behind_total",
                              "SSE clients cut off because they fell behind", registry=registry)
        self.events_in = Counter("tapstream_monitor_events_in_total", "messages the monitor read, by topic",
                                 ["topic"], registry=registry)


@dataclass(eq=False)
class Client:
    """One /events stream as the feed sees it (monitor.sse drives it)."""

    resume: Resume
    transient: deque[FeedEvent] = field(default_factory=lambda: deque(maxlen=256))


def render(decoded: Decoded, board: DeviceBoard) -> FeedEvent | None:
    """A topic message as clients see it, without changing any state (backfills use it too)."""
    code, offset, model = decoded
    if isinstance(model, LivePunch):
        info = board.lookup(model.device_serial)
        return FeedEvent(code, offset, "punch", dumps(punch_data(model, info)), model.device_serial,
                         info.site if info else "")
    if isinstance(model, DeviceStatus):
        row = pull_row(model.device_serial, board.lookup(model.device_serial), model)
        return FeedEvent(code, offset, "device", dumps(row), model.device_serial, str(row["site"]))
    if isinstance(model, Alert):
        return FeedEvent(code, offset, "alert", dumps(alert_data(model)), model.subject)
    return None


class Feed:
    """Ring, board, open alerts and connected clients; every method runs on the event loop."""

    def __init__(self, ring: Ring, board: DeviceBoard, client_buffer: int, metrics: FeedMetrics) -> None:
        self.ring = ring
        self.board = board
        self.client_buffer = client_buffer
        self.metrics = metrics
        self.clients: set[Client] = set()
        self.alerts: dict[str, Alert] = {}  # incident key -> its latest event
        self.recent: deque[str] = deque(maxlen=RECENT_PUNCHES)  # newest punches' JSON, for snapshots
        self._changed = asyncio.Event()

    def ingest(self, batch: Iterable[Decoded]) -> None:
        """Take messages in topic order; wake the clients once for the whole batch."""
        now = datetime.now(UTC)
        for decoded in batch:
            code, offset, model = decoded
            self.metrics.events_in.labels(TOPIC_LABELS[code]).inc()
            event = render(decoded, self.board)
            if event is None:
                self.ring.skip(code, offset)
                continue
            self.ring.append(event)
            self._note(model, event, now)
        self._wake()

    def _note(self, model: BaseModel | None, event: FeedEvent, now: datetime) -> None:
        if isinstance(model, LivePunch):
            self.recent.append(event.data)
            row = self.board.on_punch(model, now)
            if row is not None:
                self.announce(row)
        elif isinstance(model, DeviceStatus):
            self.board.on_status(model)
        elif isinstance(model, Alert):
            self.alerts[model.key] = model

    def announce(self, row: dict[str, Any]) -> None:
        """A device row no topic carries (a push device going on- or offline): to connected
        clients only; a reconnecting client gets the grid from /api/snapshot."""
        event = FeedEvent("", -1, "device", dumps(row), str(row["serial"]), str(row["site"]))
        for client in self.clients:
            client.transient.append(event)
        self._wake()

    def check_push_devices(self) -> None:
        """Announce push devices that fell silent (called on a timer)."""
        for row in self.board.changed_push_rows(datetime.now(UTC)):
            self.announce(row)

    def open_alerts(self) -> list[Alert]:
        firing = [a for a in self.alerts.values() if a.state is AlertState.FIRING]
        return sorted(firing, key=lambda a: (a.started_at, a.key))

    def attach(self, cursor: Cursor | None) -> Client:
        """A new client at ``cursor`` (None: from now on); it reads gaps itself, then the ring."""
        resume = Resume(cursor or self.ring.head, self.ring.seq)
        client = Client(resume)
        self.clients.add(client)
        self.metrics.clients.set(len(self.clients))
        return client

    def detach(self, client: Client) -> None:
        self.clients.discard(client)
        self.metrics.clients.set(len(self.clients))

    def changed(self) -> asyncio.Event:
        """An event set at the next change (new entries, an announcement)."""
        return self._changed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def is_behind(self, client: Client) -> bool:
        """More than client_buffer events past what the client took, or some already evicted."""
        seq = client.resume.seq
        return self.ring.seq - seq > self.client_buffer or self.ring.lost(seq)
