"""The ADMS / iclock push protocol as pure functions: no sockets, no clocks, no Kafka.

Everything the push endpoint must understand about a device request lives here so a unit test
can feed it bytes: the query string, ATTLOG bodies (positional TAB rows and the key=value rtlog
shape), line counting for the tables Tapstream only acknowledges, the handshake reply and the
``/iclock/devicecmd`` result lines. Protocol facts come from the team's ZK push protocol
reference (zk-push-protocol.md), cited by section as "§n".

Decisions a reader should know:

* A missing or empty Status becomes 255 ("undefined"), not 0: 0 means check-in, and a device
  that does not report a state must not fabricate check-ins for the timesheet pairing.
  A missing or empty Verify becomes 0 (the raw code is opaque; 0 is "any/automatic").
* Lines that are empty or only whitespace are not records: they are neither parsed nor counted.
  Every other line counts towards ``OK: <n>`` whatever happens to it (§9.3: an answer below
  the number of lines sent makes some firmware re-send the batch forever).
* Times are parsed, not judged: an impossible-but-parseable time (year 2000 after a clock reset)
  goes through; the stream decides what is plausible.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from urllib.parse import parse_qsl

from pydantic import ValidationError

from schemas.punch import DEVICE_TIME_FORMAT, PunchSource, RawPunch, make_raw_punch, zone
from schemas.quarantine import QuarantineRecord, Reason, Stage, quarantine
from tapstream.errors import ContractError
from tapstream.settings import PushSettings

PUSH_PROTOCOL_VERSION = "2.4.1"  # newest Attendance PUSH line we follow (§10.1)
MAX_TEXT_FIELD = 64  # RawPunch's limit for serials, PINs and work codes
UNDEFINED_STATE = 255  # punch state when the device sends none (see module docstring)
DEFAULT_VERIFY = 0

# Both stamp families (§3.2): some firmware reads only the old names. 9999 is never 0 (0 asks
# for a full re-upload) and is a plain number, where ZKTeco's own "None" leaves the meaning to
# however each firmware parses it. Persisting the device's last Stamp is not done (yet).
_STAMP_KEYS = ("ATTLOGStamp", "OPERLOGStamp", "ATTPHOTOStamp", "BIODATAStamp", "Stamp", "OpStamp", "PhotoStamp")
_STAMP_VALUE = "9999"
# Format II only (§3.3). Photos and biometric templates are left out on purpose: Tapstream does
# not store them and they are large and sensitive.
_TRANS_FLAG = "TransData " + "\t".join(("AttLog", "OpLog", "EnrollUser", "ChgUser"))
# Fixed daily uploads as a backstop in case a real-time upload was missed.
_TRANS_TIMES = "00:00;12:00"

# rtlog-style keys (§5.1, §10.2) and the aliases some firmware uses, lower case.
_KV_ALIASES = {
    "time": "time",
    "pin": "pin",
    "inoutstatus": "status",
    "status": "status",
    "verifytype": "verify",
    "verify": "verify",
    "verified": "verify",
    "workcode": "workcode",
}
_CONTROL_CHARS = frozenset(chr(c) for c in range(32)) - {"\t"} | {"\x7f"}
_PRINTABLE_SERIAL = frozenset(string.ascii_letters + string.digits + "-_.:")


class TableKind(Enum):
    """What the endpoint does with an uploaded table."""

    PUNCHES = "punches"  # parsed into RawPunch events
    COUNTED = "counted"  # lines counted, not stored
    PLAIN = "plain"  # acknowledged as a whole, not stored


# Upper-cased table names (§5). rtlog is the Security-PUSH attendance table (§10.2). The reply
# text is upload_reply's business, not the kind's: rtlog rows are punches answered `OK`.
TABLES: Mapping[str, TableKind] = {
    "ATTLOG": TableKind.PUNCHES,
    "RTLOG": TableKind.PUNCHES,
    "OPERLOG": TableKind.COUNTED,
    "IDCARD": TableKind.COUNTED,
    "BIODATA": TableKind.COUNTED,  # [ATT] says OK but its own example answers OK:1
    "ATTPHOTO": TableKind.PLAIN,
    "BIOPHOTO": TableKind.PLAIN,
    "OPTIONS": TableKind.PLAIN,
    "ERRORLOG": TableKind.PLAIN,
    "RTSTATE": TableKind.PLAIN,
}


@dataclass(frozen=True)
class DeviceQuery:
    """The query parameters of a device request (names matched case-insensitively)."""

    serial: str | None
    table: str | None = None
    options: str | None = None
    pushver: str | None = None
    stamp: str | None = None
    info: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedBatch:
    """An ATTLOG body split into valid punches and quarantined lines.

    ``lines`` counts every non-blank line (valid + quarantined) and is what `OK: <n>` reports.
    """

    punches: list[RawPunch]
    quarantined: list[QuarantineRecord]
    lines: int


@dataclass(frozen=True)
class CommandResult:
    """One `/iclock/devicecmd` result: ``ID=..&Return=..&CMD=..`` plus any extra pairs."""

    command_id: str
    return_code: int | None
    command: str
    extra: dict[str, str]


def parse_query(query_string: str) -> DeviceQuery:
    """Read SN, table, options, pushver, Stamp and INFO from a raw query string."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True, errors="replace"):
        params.setdefault(key.lower(), value)
    serial = params.get("sn", "").strip() or None
    return DeviceQuery(
        serial=serial,
        table=params.get("table") or None,
        options=params.get("options") or None,
        pushver=params.get("pushver") or None,
        stamp=params.get("stamp") or None,
        info=params.get("info") or None,
        params=params,
    )


def valid_serial(serial: str) -> bool:
    """True when ``serial`` can key events: 1-64 plain characters (letters, digits, -_.:)."""
    return 0 < len(serial) <= MAX_TEXT_FIELD and set(serial) <= _PRINTABLE_SERIAL


def table_kind(table: str | None) -> TableKind | None:
    """The kind of an uploaded table, or None when Tapstream does not know it."""
    return TABLES.get(table.upper()) if table else None


# Tables whose success reply carries the record count (§5); every other table gets `OK`.
_COUNTED_REPLIES = frozenset({"ATTLOG", "OPERLOG", "IDCARD", "BIODATA"})


def upload_reply(table: str, lines: int) -> str:
    """The success reply to an upload: `OK: <n>` where the protocol counts records, else `OK`."""
    return f"OK: {lines}" if table.upper() in _COUNTED_REPLIES else "OK"


def record_lines(body: bytes) -> list[bytes]:
    """The non-blank lines of a body without their CR/LF (LF, CRLF and mixes alike)."""
    return [line for line in body.splitlines() if line.strip()]


def count_lines(body: bytes) -> int:
    """The number of records in a line-oriented body (what `OK: <n>` reports)."""
    return len(record_lines(body))


def parse_attlog(body: bytes, *, device_serial: str, device_tz: str, received_at: datetime) -> ParsedBatch:
    """Parse an ATTLOG (or rtlog) body; every non-blank line is a punch or a quarantine record.

    ``received_at`` must be UTC; ``device_tz`` is the device's IANA zone.
    """
    lines = record_lines(body)
    try:
        zone(device_tz)
    except ValueError as exc:
        # A registry typo must not silently shift every punch: keep the lines for a replay.
        bad = [_quarantine(Reason.BAD_FIELD, str(exc), line, device_serial, received_at) for line in lines]
        return ParsedBatch(punches=[], quarantined=bad, lines=len(lines))
    punches: list[RawPunch] = []
    quarantined: list[QuarantineRecord] = []
    for line in lines:
        try:
            punches.append(_punch(line, device_serial, device_tz, received_at))
        except ContractError as exc:
            quarantined.append(_quarantine(Reason(exc.reason), exc.detail, line, device_serial, received_at))
    return ParsedBatch(punches=punches, quarantined=quarantined, lines=len(lines))


def _quarantine(reason: Reason, detail: str, line: bytes, serial: str, now: datetime) -> QuarantineRecord:
    return quarantine(reason, detail, Stage.PUSH, line, device_serial=serial, now=now)


def _punch(line: bytes, serial: str, tz: str, received_at: datetime) -> RawPunch:
    text = _decode(line)
    fields = _fields(text)
    pin = _pin(fields.get("pin", ""))
    device_time = _time(fields.get("time", ""))
    work_code = fields.get("workcode", "")
    if len(work_code) > MAX_TEXT_FIELD:
        raise ContractError(Reason.BAD_FIELD, f"work code longer than {MAX_TEXT_FIELD} characters")
    try:
        return make_raw_punch(
            device_serial=serial,
            user_code=pin,
            device_time=device_time,
            device_tz=tz,
            punch_state=_integer(fields.get("status", ""), "status", UNDEFINED_STATE, 255),
            verify_mode=_integer(fields.get("verify", ""), "verify", DEFAULT_VERIFY, 65535),
            source=PunchSource.PUSH,
            raw=text,
            received_at=received_at,
            work_code=work_code,
        )
    except OverflowError as exc:
        # Year 1 or 9999 pushed past the datetime range by the zone offset.
        raise ContractError(Reason.BAD_TIMESTAMP, f"time out of range in {tz}: {exc}") from exc
    except ValidationError as exc:
        raise ContractError(Reason.MALFORMED_LINE, f"not a valid punch: {exc.errors()[0]['msg']}") from exc


def _decode(line: bytes) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(Reason.NOT_TEXT, f"invalid UTF-8 at byte {exc.start}") from exc
    if not _CONTROL_CHARS.isdisjoint(text):
        raise ContractError(Reason.NOT_TEXT, "control characters in the line (binary data?)")
    return text


def _fields(text: str) -> dict[str, str]:
    """Name the fields of a positional row or a key=value row (detected by '=' in field one)."""
    parts = [part.strip() for part in text.split("\t")]
    if "=" in parts[0]:
        return _key_value_fields(parts)
    if len(parts) < 2:
        raise ContractError(Reason.MISSING_FIELDS, "1 field; a punch needs at least PIN and Time")
    names = ("pin", "time", "status", "verify", "workcode")
    return dict(zip(names, parts, strict=False))


def _key_value_fields(parts: Sequence[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in parts:
        if not part:
            continue  # trailing TABs
        key, sep, value = part.partition("=")
        if not sep:
            raise ContractError(Reason.MALFORMED_LINE, f"field {part[:20]!r} is not key=value")
        name = _KV_ALIASES.get(key.strip().lower())
        if name is not None:
            fields.setdefault(name, value.strip())
    missing = [name for name in ("pin", "time") if name not in fields]
    if missing:
        raise ContractError(Reason.MISSING_FIELDS, f"key=value row without {' and '.join(missing)}")
    return fields


def _pin(value: str) -> str:
    if not value:
        raise ContractError(Reason.BAD_FIELD, "empty PIN")
    if any(ch.isspace() for ch in value):
        # "OPLOG 4", "USER PIN=..": an OPERLOG row posted as ATTLOG, not a PIN with a space.
        raise ContractError(Reason.MALFORMED_LINE, f"first field {value[:20]!r} is not a PIN")
    if len(value) > MAX_TEXT_FIELD:
        raise ContractError(Reason.BAD_FIELD, f"PIN longer than {MAX_TEXT_FIELD} characters")
    return value


def _time(value: str) -> datetime:
    if not value:
        raise ContractError(Reason.MISSING_FIELDS, "empty Time field")
    try:
        return datetime.strptime(value, DEVICE_TIME_FORMAT)
    except ValueError as exc:
        raise ContractError(Reason.BAD_TIMESTAMP, f"time {value[:32]!r} is not YYYY-MM-DD HH:MM:SS") from exc


def _integer(value: str, name: str, default: int, highest: int) -> int:
    if not value:
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise ContractError(Reason.BAD_FIELD, f"{name} {value[:20]!r} is not an integer") from exc
    if not 0 <= number <= highest:
        raise ContractError(Reason.BAD_FIELD, f"{name} {number} outside 0..{highest}")
    return number


def timezone_value(tz: str, now: datetime) -> int:
    """The handshake `TimeZone`: hours when whole and within ±11, else minutes (§3.2).

    ``now`` must be timezone-aware: the offset is the zone's offset at that instant (DST).
    """
    offset = now.astimezone(zone(tz)).utcoffset()
    minutes = round(offset.total_seconds() / 60) if offset is not None else 0
    if minutes % 60 == 0 and -12 < minutes // 60 < 12:
        return minutes // 60
    if abs(minutes) > 60:
        return minutes
    # |offset| under an hour and not whole: the protocol has no encoding (values 12..60 are
    # undefined); no current IANA zone is in this case, so round to the nearest hour.
    return round(minutes / 60)


def handshake_body(serial: str, settings: PushSettings, tz: str | None, *, now: datetime) -> str:
    """The reply to `GET /iclock/cdata?options=all` (§3).

    ``tz`` None leaves `TimeZone` out: the device then keeps its own zone setting instead of
    being moved by a guess (an unknown device). ``now`` (aware) fixes the DST offset.
    """
    lines = [f"GET OPTION FROM: {serial}"]
    lines += [f"{key}={_STAMP_VALUE}" for key in _STAMP_KEYS]
    lines += [
        f"ErrorDelay={settings.error_delay_s}",
        f"Delay={settings.delay_s}",
        f"TransTimes={_TRANS_TIMES}",
        f"TransInterval={settings.trans_interval_min}",
        f"TransFlag={_TRANS_FLAG}",
    ]
    if tz is not None:
        lines.append(f"TimeZone={timezone_value(tz, now)}")
    lines += [
        "Realtime=1",
        "Encrypt=0",
        f"ServerVer={PUSH_PROTOCOL_VERSION}",
        f"PushProtVer={PUSH_PROTOCOL_VERSION}",
    ]
    return "\n".join(lines) + "\n"


def parse_devicecmd(body: bytes) -> list[CommandResult]:
    """Read command results; lines without ``ID=`` continue the previous result (INFO, Shell)."""
    results: list[CommandResult] = []
    for raw in record_lines(body):
        pairs = _ampersand_pairs(raw.decode("utf-8", errors="replace"))
        if "ID" in pairs or not results:
            code = pairs.pop("Return", "")
            results.append(
                CommandResult(
                    command_id=pairs.pop("ID", ""),
                    return_code=int(code) if code.lstrip("-").isdigit() else None,
                    command=pairs.pop("CMD", ""),
                    extra=pairs,
                )
            )
        else:
            results[-1].extra.update(pairs)
    return results


def _ampersand_pairs(line: str) -> dict[str, str]:
    # Split on '&' ourselves: the body is multi-line and values may contain '=' (§8).
    pairs: dict[str, str] = {}
    for piece in line.split("&"):
        key, _, value = piece.partition("=")
        if key.strip():
            pairs[key.strip()] = value
    return pairs


def parse_options(body: bytes) -> dict[str, str]:
    """Read a `table=options` body: comma-separated key=value pairs whose values may hold commas."""
    options: dict[str, str] = {}
    last: str | None = None
    for piece in body.decode("utf-8", errors="replace").strip().split(","):
        key, sep, value = piece.partition("=")
        if sep and key.strip():
            last = key.strip()
            options[last] = value
        elif last is not None:
            # "~OEMVendor=ZKTECO CO., LTD." arrives split at its comma (§4).
            options[last] += "," + piece
    return options
