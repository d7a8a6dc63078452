"""Turn what a pull device returns into punches: the attendance-log buffer and live events.

pyzk's own ``get_attendance`` is avoided on purpose: PyPI 0.9 re-slices the remaining buffer
for every record (quadratic: a 100,000-record log spends most of its time copying), computes
the record size with float division, always advances 40 bytes (mis-splitting other sizes, pyzk
#242), swaps state and verify code between layouts, and raises on the first undecodable time,
losing the whole download. Here the buffer from pyzk's ``read_with_buffer`` is parsed once, each
record on its own: a bad record becomes a ``BadEntry`` for the dead-letter topic and the records
around it still go through.

Layouts (zk-pull-protocol.md §10): 40 bytes = uid u16, user id 24s, verify u8, packed time u32,
state u8, 8 reserved; 16 bytes = user id u32, packed time u32, state u8, verify u8, 2 reserved,
work code u32; 8 bytes = uid u16, verify u8, packed time u32, state u8.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from schemas.quarantine import Reason

logger = logging.getLogger(__name__)

RECORD_SIZES = (40, 16, 8)
_LAYOUTS = {40: struct.Struct("<H24sBIB8x"), 16: struct.Struct("<IIBB2xI"), 8: struct.Struct("<HBIB")}


@dataclass(frozen=True)
class LogEntry:
    """One attendance record as the device holds it."""

    position: int  # index in the log as downloaded
    raw: bytes  # the record's bytes (live events: a text rendering of what pyzk decoded)
    user_code: str
    device_time: datetime  # naive device wall clock
    state: int
    verify: int
    work_code: str = ""


@dataclass(frozen=True)
class BadEntry:
    """A record that cannot become a punch, kept whole for the dead-letter topic."""

    position: int
    raw: bytes
    reason: Reason
    detail: str


Entry = LogEntry | BadEntry


def decode_packed_time(value: int) -> datetime:
    """Decode the device's packed u32 time (every month counted as 31 days); ValueError if impossible."""
    second, value = value % 60, value // 60
    minute, value = value % 60, value // 60
    hour, value = value % 24, value // 24
    day, value = value % 31 + 1, value // 31
    month, year = value % 12 + 1, value // 12 + 2000
    return datetime(year, month, day, hour, minute, second)


def record_size(total: int, count: int) -> int:
    """The record layout of a log buffer of ``total`` bytes said to hold ``count`` records.

    Devices report the count and the buffer separately; when they disagree (a punch landed in
    between on some firmware) the size is the known layout that divides the buffer.
    """
    if count > 0 and total % count == 0 and total // count in RECORD_SIZES:
        return total // count
    for size in RECORD_SIZES:
        if total % size == 0:
            logger.warning("log of %d bytes does not hold %d records; reading %d-byte records", total, count, size)
            return size
    raise ValueError(f"a log of {total} bytes matches no known record layout (40, 16 or 8 bytes)")


def parse_log(buffer: bytes, count: int, uid_codes: Mapping[int, str] | None = None) -> list[Entry]:
    """Parse the attendance dataset returned by pyzk's ``read_with_buffer`` (4-byte size first).

    ``count`` is the record count the device reported; ``uid_codes`` maps internal user numbers
    to PINs, needed for 8-byte records only. Raises ValueError if the buffer has no known layout.
    """
    if len(buffer) < 4:
        return []
    (total,) = struct.unpack_from("<I", buffer)
    body = memoryview(buffer)[4 : 4 + total]
    if len(body) < total:
        raise ValueError(f"log buffer truncated: {len(body)} of {total} bytes")
    if total == 0:
        return []
    size = record_size(total, count)
    layout = _LAYOUTS[size]
    entries: list[Entry] = []
    for position, fields in enumerate(layout.iter_unpack(body)):
        raw = bytes(body[position * size : (position + 1) * size])
        entries.append(_entry(size, position, raw, fields, uid_codes or {}))
    return entries


def _entry(size: int, position: int, raw: bytes, fields: tuple[int | bytes, ...], uid_codes: Mapping[int, str]) -> Entry:
    code: int | bytes | str
    work_code = ""
    if size == 40:
        _uid, code, verify, packed, state = fields
    elif size == 16:
        code, packed, state, verify, work = fields
        work_code = str(work) if work else ""
    else:
        uid, verify, packed, state = fields
        code = uid_codes.get(int(uid), str(uid))
    try:
        user_code = _user_code(code)
    except ValueError as exc:
        return BadEntry(position, raw, Reason.BAD_FIELD, str(exc))
    try:
        device_time = decode_packed_time(int(packed))
    except ValueError as exc:
        return BadEntry(position, raw, Reason.BAD_TIMESTAMP, f"packed time {packed!r}: {exc}")
    return LogEntry(position, raw, user_code, device_time, int(state), int(verify), work_code)


def _user_code(code: int | bytes | str) -> str:
    if isinstance(code, bytes):
        try:
            text = code.split(b"\x00", 1)[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"user id {code!r} is not UTF-8") from exc
    else:
        text = str(code)
    text = text.strip()
    if not text or len(text) > 64:
        raise ValueError(f"user id {text!r} is empty or longer than 64 characters")
    return text


def live_entry(user_id: object, timestamp: object, status: object, punch: object) -> Entry:
    """A live-capture event as pyzk decoded it (status = verify code, punch = state).

    pyzk hands out no raw bytes for events; ``raw`` renders what it decoded.
    """
    raw = f"live user_id={user_id!s} time={timestamp!s} status={status!s} punch={punch!s}".encode()
    if not isinstance(timestamp, datetime):
        return BadEntry(-1, raw, Reason.BAD_TIMESTAMP, f"event time {timestamp!r} is not a time")
    try:
        user_code = _user_code(str(user_id))
        state, verify = int(str(punch)), int(str(status))
    except ValueError as exc:
        return BadEntry(-1, raw, Reason.BAD_FIELD, str(exc))
    return LogEntry(-1, raw, user_code, timestamp.replace(microsecond=0), state, verify)
