"""Turn a quarantined record's original bytes back into raw punches, the way its stage would today.

What each stage keeps as ``original``, and so how it is read back:

* push — one ATTLOG/rtlog line (a bad line, an unknown or disabled device), or a whole body (an
  unknown table, a body over the size limit, a parser crash). Re-read by the push endpoint's own
  decision, ``producers.push_server.upload_outcome``, against the CURRENT device registry: what
  the endpoint would make of the upload now.
* pull — one binary log record (40 or 16 bytes) or a live event as pyzk decoded it
  (``live user_id=.. time=.. status=.. punch=..``), re-read with ``producers.pull.records`` and
  converted by ``producers.pull.convert`` in the registry's zone. 8-byte records name the user by
  the device's internal number, which only the device's user table maps: refused (a
  ``tapstream backfill`` reads them again).
* stream — the raw-topic value: an encoded RawPunch (implausible_time, unknown_state,
  sink_rejected), re-sent as is — or re-resolved when the registry now gives its device another
  zone — or bytes that were not a punch (undecodable_event), sent only if they decode now.

A record is all or nothing: if any of its lines still fails, none is sent. Every revived punch
is then checked against the validation settings in force; one the worker would quarantine again
is refused here, with the reason, rather than sent round to make a new dead letter.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from producers.pull.convert import Reading, convert
from producers.pull.records import Entry, live_entry, parse_log
from producers.push_server import upload_outcome
from producers.registry import DeviceInfo
from producers.spool import SpoolRecord
from schemas.codec import decode, encode
from schemas.punch import PunchSource, RawPunch, resolve_utc
from schemas.quarantine import QuarantineRecord, Reason, Stage
from streams.logic import implausible
from tapstream.errors import ContractError
from tapstream.settings import Settings, ValidationSettings

logger = logging.getLogger(__name__)

# What producers.pull.records.live_entry writes as a live event's raw bytes.
_LIVE = re.compile(r"live user_id=(?P<user>.*) time=(?P<time>.*) status=(?P<status>.*) punch=(?P<punch>.*)", re.DOTALL)
_LOG_RECORD_SIZES = (40, 16)


class Quarantined(Protocol):
    """The fields of a quarantine row a revival reads."""

    @property
    def stage(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def device_serial(self) -> str | None: ...
    @property
    def original(self) -> bytes: ...
    @property
    def original_size(self) -> int: ...
    @property
    def quarantined_at(self) -> datetime: ...


@dataclass(frozen=True)
class Revived:
    """The raw-topic messages (key = device serial, value = encoded RawPunch) and a note on changes."""

    messages: list[tuple[bytes, bytes]]
    note: str = ""


@dataclass(frozen=True)
class Refused:
    """Why a record cannot be replayed (yet)."""

    why: str


Devices = Mapping[str, DeviceInfo]


def revive(row: Quarantined, devices: Devices, settings: Settings) -> Revived | Refused:
    """The punches a quarantined record becomes today, or why it cannot (``devices``: the registry)."""
    handler = _BY_STAGE.get(row.stage)
    if handler is None:
        return Refused(f"unknown stage {row.stage!r}")
    try:
        revived = handler(row, devices, settings)
    except Exception as exc:  # a parser bug on one record must not stop the replay of the others
        logger.exception("cannot re-read quarantined record (stage %s, reason %s)", row.stage, row.reason)
        return Refused(f"internal error while re-reading: {exc!r}")
    return revived if isinstance(revived, Refused) else _validated(revived, settings.validation)


def _push(row: Quarantined, devices: Devices, settings: Settings) -> Revived | Refused:
    if row.reason == Reason.UNKNOWN_TABLE:
        return Refused("not attendance data (an ADMS table Tapstream does not know): kept to inspect, nothing to replay")
    if row.original_size > len(row.original):
        return Refused(
            f"only the first {len(row.original)} of {row.original_size} bytes were kept; the device keeps the "
            "batch and re-sends it once TAPSTREAM_PUSH__MAX_BODY_BYTES allows it"
        )
    if not row.device_serial:
        return Refused("no device serial recorded")
    serial = row.device_serial
    outcome = upload_outcome("ATTLOG", row.original, serial, devices.get(serial), settings, _utc(row.quarantined_at))
    return _from_records(outcome.records, settings)


def _pull(row: Quarantined, devices: Devices, settings: Settings) -> Revived | Refused:
    device = _registered(row.device_serial, devices)
    if isinstance(device, Refused):
        return device
    parsed = _pull_entry(row.original)
    if isinstance(parsed, Refused):
        return parsed
    entry, source = parsed
    zone = device.timezone or settings.devices.default_timezone
    reading = Reading(device.serial, zone, source, _utc(row.quarantined_at))
    return _from_records(convert([entry], reading, settings.topics).records, settings)


def _stream(row: Quarantined, devices: Devices, settings: Settings) -> Revived | Refused:
    try:
        punch = decode(RawPunch, row.original)
    except ContractError as exc:
        return Refused(f"still not a valid punch: {exc.detail}")
    key = punch.device_serial.encode("utf-8")
    device = devices.get(punch.device_serial)
    zone = (device.timezone or settings.devices.default_timezone) if device is not None else punch.device_tz
    if zone == punch.device_tz:
        return Revived([(key, row.original)])
    try:
        fixed = punch.model_copy(update={"device_tz": zone, "punch_time": resolve_utc(punch.device_time, zone)})
    except (ValueError, OverflowError) as exc:
        return Refused(f"cannot resolve its device time in the registry's zone {zone}: {exc}")
    return Revived([(key, encode(fixed))], f"zone {punch.device_tz} -> {zone} (registry)")


_BY_STAGE: dict[str, Callable[[Quarantined, Devices, Settings], Revived | Refused]] = {
    Stage.PUSH.value: _push,
    Stage.PULL.value: _pull,
    Stage.STREAM.value: _stream,
}


def _registered(serial: str | None, devices: Devices) -> DeviceInfo | Refused:
    device = devices.get(serial) if serial else None
    if device is None:
        return Refused(f"device {serial} is not in the registry (tapstream devices add ...)")
    if not device.enabled:
        return Refused(f"device {serial} is disabled in the registry (tapstream devices enable {serial})")
    return device


def _pull_entry(original: bytes) -> tuple[Entry, PunchSource] | Refused:
    """A pull original as the entry the pull producer read, and how it was read."""
    # Live text first: a binary record starting with "live user_id=" is not a real risk, while a
    # live rendering can happen to be 40 bytes long.
    live = _LIVE.fullmatch(original.decode("utf-8", "replace"))
    if live is not None:
        entry = live_entry(live["user"], _time_or_text(live["time"]), live["status"], live["punch"])
        return entry, PunchSource.PULL_LIVE
    if len(original) in _LOG_RECORD_SIZES:
        # parse_log reads a download: the 4-byte size, then the records.
        return parse_log(struct.pack("<I", len(original)) + original, 1)[0], PunchSource.PULL_POLL
    if len(original) == 8:
        return Refused(
            "an 8-byte log record names its user by the device's internal number: "
            "`tapstream backfill --device SERIAL` reads it again with the device's user table"
        )
    return Refused(f"{len(original)} bytes are neither a pull log record (40 or 16 bytes) nor a live event")


def _time_or_text(text: str) -> datetime | str:
    # live_entry quarantines anything that is not a datetime as bad_timestamp: leave that to it.
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def _from_records(records: Sequence[SpoolRecord], settings: Settings) -> Revived | Refused:
    """A producer's spool records for one original: all punches, or the first reason one is not."""
    bad = [decode(QuarantineRecord, value) for topic, _, value in records if topic == settings.topics.dlq]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return Refused(f"{bad[0].reason.value}: {bad[0].detail}{more}")
    punches = [(key or b"", value) for topic, key, value in records if topic == settings.topics.raw]
    return Revived(punches) if punches else Refused("no punch in the original")


def _validated(revived: Revived, rules: ValidationSettings) -> Revived | Refused:
    for _, value in revived.messages:
        problem = implausible(decode(RawPunch, value), rules)
        if problem is not None:
            reason, detail = problem
            return Refused(f"{reason.value}: {detail} (the worker would quarantine it again; see TAPSTREAM_VALIDATION__*)")
    return revived


def _utc(moment: datetime) -> datetime:
    # Postgres hands timestamptz back in the session's zone; RawPunch wants UTC itself.
    return moment.astimezone(UTC)
