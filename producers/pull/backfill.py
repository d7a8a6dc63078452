"""`tapstream backfill`: read one pull device's whole log again, on demand, into Kafka.

For gaps an operator wants closed now rather than at the next catch-up: a device restored from a
backup, a log read before the device was registered, a range quarantined by mistake. Records
carry the same event ids as before, so the pipeline keeps one of each: backfilling twice, or over
what was already collected, changes nothing downstream.

It uses its own spool (``spool/backfill.sqlite3``) and publishes in the foreground until Kafka
has confirmed every record; anything left by an interrupted run is published first next time.
The running pull producer's high-water marks are not touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from producers.publisher import Publisher
from producers.pull.client import PullClient, check_identity
from producers.pull.convert import Reading, convert
from producers.pull.device import ClientFactory
from producers.pull.records import Entry, LogEntry
from producers.registry import DeviceInfo
from producers.spool import Spool
from schemas.punch import PunchSource
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # stage, done, total


@dataclass(frozen=True)
class BackfillResult:
    """What one backfill did."""

    in_log: int
    selected: int
    quarantined: int
    published: int
    seconds: float


def select_since(entries: list[Entry], since: datetime | None) -> list[Entry]:
    """Entries at or after ``since`` (device wall clock); all of them when ``since`` is None.

    Unreadable records have no time: they are kept only when the whole log is backfilled.
    """
    if since is None:
        return entries
    return [e for e in entries if isinstance(e, LogEntry) and e.device_time >= since]


def backfill(settings: Settings, device: DeviceInfo, since: datetime | None, *,
             progress: Progress | None = None, client_factory: ClientFactory = PullClient) -> BackfillResult:
    """Download ``device``'s log and publish the records at or after ``since`` (naive: device time)."""
    report = progress or (lambda _stage, _done, _total: None)
    started = time.monotonic()
    spool = Spool(settings.path("spool", "backfill.sqlite3"))
    publisher = Publisher(spool, settings, batch=settings.pull.publish_batch, name="backfill")
    try:
        if spool.depth():
            logger.info("publishing %d records left by an earlier backfill first", spool.depth())
            _publish(publisher, spool, spool.depth(), report)
        timezone = device.timezone or settings.devices.default_timezone
        entries, offset = _download(device, settings, timezone, client_factory, report)
        chosen = select_since(entries, since)
        reading = Reading(device.serial, timezone, PunchSource.PULL_POLL, datetime.now(UTC), offset)
        converted = convert(chosen, reading, settings.topics)
        spool.append(converted.records)
        published = _publish(publisher, spool, len(converted.records), report)
    finally:
        spool.close()
    return BackfillResult(len(entries), len(chosen), converted.quarantined, published, time.monotonic() - started)


def _download(device: DeviceInfo, settings: Settings, timezone: str, client_factory: ClientFactory,
              report: Progress) -> tuple[list[Entry], float]:
    client = client_factory(device, settings.pull.timeout_s)
    try:
        report("connecting", 0, 1)
        client.connect()
        facts = client.facts(timezone)
        check_identity(facts, device, client.where)
        report("downloading", 0, facts.records)
        entries: list[Entry] = client.download()
        report("downloading", len(entries), len(entries))
        return entries, facts.clock_offset_s
    finally:
        client.close()


def _publish(publisher: Publisher, spool: Spool, total: int, report: Progress) -> int:
    """Drain the spool into Kafka, retrying with backoff while Kafka fails (Ctrl-C leaves it spooled)."""
    published, delay = 0, 1.0
    report("publishing", 0, total)
    while spool.depth():
        confirmed = publisher.drain_once()
        published += confirmed
        report("publishing", min(published, total), total)
        if confirmed == 0:
            logger.warning("Kafka did not confirm the last round (%s); retrying in %.0f s", publisher.last_error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        else:
            delay = 1.0
    return published
