"""The life of one pull device: connect, catch up, capture live, and again — until told to stop.

One *cycle* is one connection: connect (and authenticate), read what the device says about
itself, catch up (download the log, produce what is after the durable high-water mark), then
live capture until the next catch-up is due (``pull.catchup_interval_s`` /
``pull.info_refresh_s``, whichever is sooner, shortened at random by up to a quarter so that a
fleet started together spreads its catch-ups over the interval). The connection is then dropped and the next cycle
starts. The periodic catch-up is what makes a silently dead live capture harmless: every punch
is in the device log, and the log is read again every few minutes.

Live punches skip nothing and wait for nothing: each is spooled at once. A catch-up leaves out
punches already spooled by live capture since the last mark (the same event ids), so a healthy
device's punches reach Kafka once. Anything that goes wrong ends the cycle as a failure (see
``health.Health`` for backoff, alerts and realtime switching).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import asdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from producers.pull.client import DeviceFacts, PullClient, check_identity
from producers.pull.convert import Reading, convert
from producers.pull.health import Health
from producers.pull.marks import Mark, mark_after, resume_point
from producers.pull.metrics import PullMetrics
from producers.pull.records import Entry, LogEntry
from producers.registry import DeviceInfo
from producers.spool import SpoolRecord
from schemas.codec import encode
from schemas.device_status import DeviceStatus, LinkState
from schemas.punch import PunchSource, compute_event_id
from tapstream.errors import DeviceError
from tapstream.settings import Settings

logger = logging.getLogger(__name__)


class Output(Protocol):
    """Where a device worker's records go (the spool writer; a test passes a fake)."""

    def emit(
        self, records: Sequence[SpoolRecord], marks: Mapping[str, str] | None = None,
        on_durable: Callable[[], None] | None = None,
    ) -> None: ...

    def mark(self, key: str) -> str | None: ...


ClientFactory = Callable[[DeviceInfo, float], Any]


def mark_key(serial: str) -> str:
    """The spool mark holding a device's high-water mark."""
    return f"pull:{serial}"


class DeviceWorker:
    """Runs one device in the calling thread (``run``) until ``stop`` is called."""

    def __init__(self, device: DeviceInfo, settings: Settings, output: Output, *,
                 client_factory: ClientFactory = PullClient, metrics: PullMetrics | None = None) -> None:
        self.device = device
        self._metrics = metrics
        self._settings = settings
        self._pull = settings.pull
        self._output = output
        self._client_factory = client_factory
        self._timezone = device.timezone or settings.devices.default_timezone
        self._stop = threading.Event()
        self._live_ids: set[uuid.UUID] = set()  # spooled by live capture since the last mark
        self._live_lock = threading.Lock()
        self.health = Health()
        self.facts: DeviceFacts | None = None
        self.produced = 0
        self._last_seen: datetime | None = None
        self._last_catchup: datetime | None = None
        self.status = self._status(LinkState.CONNECTING, connected=False)

    def stop(self) -> None:
        """Ask the worker to finish (live capture notices within ``pull.live_tick_s``)."""
        self._stop.set()

    def run(self) -> None:
        """Cycle until stopped; failures wait out their backoff, then try again."""
        while not self._stop.is_set():
            try:
                self._cycle()
            except DeviceError as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug must cost one device a retry, never the process
                logger.exception("device %s: unexpected error", self.device.serial)
                self._failed(f"unexpected {type(exc).__name__}: {exc}")
            else:
                continue
            state = LinkState.BACKOFF if self.health.realtime else LinkState.POLLING
            self._publish(state, connected=False)
            self._stop.wait(self.health.backoff_s(self._pull))
        self._publish(LinkState.STOPPED, connected=False)

    def _cycle(self) -> None:
        client = self._client_factory(self.device, self._pull.timeout_s)
        try:
            self._publish(LinkState.CONNECTING, connected=False)
            client.connect()
            self.facts = self._read_facts(client)
            self._publish(LinkState.CATCHING_UP, connected=True)
            self.catch_up(client)
            for change in self.health.succeeded():
                logger.warning("device %s: %s", self.device.serial, change)
            if not self._stop.is_set():
                self._publish(LinkState.LIVE, connected=True)
                self._live(client)
        finally:
            client.close()

    def _read_facts(self, client: Any) -> DeviceFacts:
        facts: DeviceFacts = client.facts(self._timezone)
        self._seen()
        check_identity(facts, self.device, client.where)
        return facts

    def catch_up(self, client: Any) -> int:
        """Download the log and produce what is new; return how many records were spooled."""
        with self._live_lock:
            live = set(self._live_ids)  # spooled live before this download: all in its log
        entries: list[Entry] = client.download()
        self._seen()
        raws = [entry.raw for entry in entries]
        resume = resume_point(raws, Mark.decode(self._output.mark(mark_key(self.device.serial))))
        fresh = entries[resume.start:]
        new = [e for e in fresh if not self._spooled_live(e, live)] if live else fresh
        converted = convert(new, self._reading(PunchSource.PULL_POLL), self._settings.topics)
        self._output.emit(converted.records, marks={mark_key(self.device.serial): mark_after(raws).encode()})
        with self._live_lock:
            self._live_ids -= live  # below the new mark now (or cleared off the device): done with
        self._produced(PunchSource.PULL_POLL, len(converted.event_ids))
        self._last_catchup = datetime.now(UTC)
        logger.info(
            "device %s: caught up, %d records in the log, %d new spooled (%d already live, %d quarantined; %s)",
            self.device.serial, len(entries), len(converted.records), len(fresh) - len(new),
            converted.quarantined, resume.why,
        )
        return len(converted.records)

    def _spooled_live(self, entry: Entry, live: set[uuid.UUID]) -> bool:
        if not isinstance(entry, LogEntry):
            return False
        return compute_event_id(self.device.serial, entry.user_code, entry.device_time, entry.state) in live

    def _live(self, client: Any) -> None:
        # A random 75-100 % of the interval: devices started together would otherwise all
        # reconnect and download at the same moment, every interval, forever.
        cycle_s = min(self._pull.catchup_interval_s, self._pull.info_refresh_s) * random.uniform(0.75, 1.0)
        now = time.monotonic()
        cycle_ends, next_status = now + cycle_s, now + self._pull.status_interval_s
        leaving = False
        try:
            for entry in client.live(self._pull.live_tick_s):
                if entry is not None:
                    self._seen()
                    self._emit_live(entry)
                now = time.monotonic()
                if now >= next_status:
                    self._publish(LinkState.LIVE, connected=True)
                    next_status = now + self._pull.status_interval_s
                if not leaving and (self._stop.is_set() or now >= cycle_ends):
                    client.end_live()
                    leaving = True
        except DeviceError as exc:
            if not leaving:
                raise
            # Events racing pyzk's goodbye garble it; the connection is dropped anyway.
            logger.debug("device %s: leaving live capture: %s", self.device.serial, exc)
            return
        if not leaving:
            raise DeviceError(f"{client.where}: live capture ended on its own")

    def _emit_live(self, entry: Entry) -> None:
        converted = convert([entry], self._reading(PunchSource.PULL_LIVE), self._settings.topics)
        ids = converted.event_ids

        def durable() -> None:
            with self._live_lock:
                self._live_ids.update(ids)

        self._output.emit(converted.records, on_durable=durable if ids else None)
        self._produced(PunchSource.PULL_LIVE, len(ids))

    def _produced(self, source: PunchSource, count: int) -> None:
        self.produced += count
        if self._metrics is not None:
            self._metrics.punches(source, count)

    def _reading(self, source: PunchSource) -> Reading:
        offset = self.facts.clock_offset_s if self.facts else None
        return Reading(self.device.serial, self._timezone, source, datetime.now(UTC), offset)

    def _failed(self, error: str) -> None:
        triggered = self.health.failed(error, time.time(), self._pull)
        if self._metrics is not None:
            self._metrics.failure()
        log = logger.error if triggered else logger.warning
        log("device %s: %s (failure %d%s)", self.device.serial, error, self.health.failures,
            ", " + ", ".join(triggered) if triggered else "")

    def _seen(self) -> None:
        self._last_seen = datetime.now(UTC)

    def _publish(self, state: LinkState, *, connected: bool) -> None:
        self.status = self._status(state, connected=connected)
        key = self.device.serial.encode()
        self._output.emit([(self._settings.topics.device_status, key, encode(self.status))])

    def _status(self, state: LinkState, *, connected: bool) -> DeviceStatus:
        health, since = self.health, self.health.failing_since
        # What the device said of itself, under the status's names (serial -> reported_serial).
        reported = {} if self.facts is None else asdict(self.facts)
        reported["reported_serial"] = reported.pop("serial", None)
        return DeviceStatus(
            device_serial=self.device.serial, name=self.device.name, site=self.device.site,
            address=self.device.where, state=state, connected=connected, realtime=health.realtime,
            last_seen=self._last_seen, last_error=health.last_error, consecutive_failures=health.failures,
            failing_since=None if since is None else datetime.fromtimestamp(since, UTC),
            alert=health.alert_text(), **reported, last_catchup_at=self._last_catchup,
            produced_total=self.produced, reported_at=datetime.now(UTC),
        )
