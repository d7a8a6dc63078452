"""Entries read from a pull device -> spool records: punches for the raw topic, the rest quarantined."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from producers.pull.records import BadEntry, Entry
from producers.spool import SpoolRecord
from schemas.codec import encode
from schemas.punch import PunchSource, make_raw_punch
from schemas.quarantine import Reason, Stage, quarantine
from tapstream.settings import TopicSettings


@dataclass(frozen=True)
class Reading:
    """The circumstances of one read: which device, when, how, and its clock offset then."""

    serial: str
    timezone: str
    source: PunchSource
    received_at: datetime
    clock_offset_s: float | None = None


@dataclass
class Converted:
    """Spool records for a list of entries, and the event ids of the punches among them."""

    records: list[SpoolRecord] = field(default_factory=list)
    event_ids: list[uuid.UUID] = field(default_factory=list)
    quarantined: int = 0


def convert(entries: Sequence[Entry], reading: Reading, topics: TopicSettings) -> Converted:
    """Build the records to spool: each punch to ``topics.raw``, each bad entry to ``topics.dlq``."""
    out = Converted()
    key = reading.serial.encode()
    for entry in entries:
        if isinstance(entry, BadEntry):
            out.records.append((topics.dlq, key, _quarantined(entry.reason, entry.detail, entry.raw, reading)))
            out.quarantined += 1
            continue
        try:
            punch = make_raw_punch(
                device_serial=reading.serial, user_code=entry.user_code, device_time=entry.device_time,
                device_tz=reading.timezone, punch_state=entry.state, verify_mode=entry.verify,
                work_code=entry.work_code, source=reading.source, raw=_raw_text(entry.raw, reading.source),
                received_at=reading.received_at, clock_offset_s=reading.clock_offset_s,
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            out.records.append((topics.dlq, key, _quarantined(Reason.BAD_FIELD, str(exc), entry.raw, reading)))
            out.quarantined += 1
            continue
        out.records.append((topics.raw, key, encode(punch)))
        out.event_ids.append(punch.event_id)
    return out


def _raw_text(raw: bytes, source: PunchSource) -> str:
    # Log records are binary (kept as hex); live events are pyzk's decoded fields as text.
    return raw.decode("utf-8", "replace") if source is PunchSource.PULL_LIVE else raw.hex()


def _quarantined(reason: Reason, detail: str, raw: bytes, reading: Reading) -> bytes:
    record = quarantine(reason, detail, Stage.PULL, raw, device_serial=reading.serial, now=reading.received_at)
    return encode(record)
