"""The ZKTeco "pull" wire format (port 4370) as pyzk 0.9 speaks it: a pure codec, no I/O.

Section numbers (§) refer to /work/shared/reference/zk-pull-protocol.md. Everything is
little-endian. A *packet* here is the 8-byte command header plus its data; on TCP it travels
behind an 8-byte prefix (magic + length), on UDP it is one datagram.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from producers.pull.records import decode_packed_time

# command codes the emulator answers (§5.1)
CMD_DB_RRQ = 7
CMD_USERTEMP_RRQ = 9
CMD_OPTIONS_RRQ = 11
CMD_OPTIONS_WRQ = 12
CMD_ATTLOG_RRQ = 13
CMD_CLEAR_DATA = 14
CMD_CLEAR_ATTLOG = 15
CMD_UNLOCK = 31
CMD_GET_FREE_SIZES = 50
CMD_STARTVERIFY = 60
CMD_CANCELCAPTURE = 62
CMD_GET_PINWIDTH = 69
CMD_DOORSTATE_RRQ = 75
CMD_GET_TIME = 201
CMD_SET_TIME = 202
CMD_REG_EVENT = 500
CMD_CONNECT = 1000
CMD_EXIT = 1001
CMD_ENABLEDEVICE = 1002
CMD_DISABLEDEVICE = 1003
CMD_RESTART = 1004
CMD_POWEROFF = 1005
CMD_REFRESHDATA = 1013
CMD_TESTVOICE = 1017
CMD_GET_VERSION = 1100
CMD_AUTH = 1102
CMD_PREPARE_DATA = 1500
CMD_DATA = 1501
CMD_FREE_DATA = 1502
CMD_PREPARE_BUFFER = 1503
CMD_READ_BUFFER = 1504

# reply codes (§5.2)
CMD_ACK_OK = 2000
CMD_ACK_ERROR = 2001
CMD_ACK_UNAUTH = 2005
CMD_ACK_UNKNOWN = 0xFFFF

EF_ATTLOG = 1
FCT_USER = 5

MAGIC = b"\x50\x50\x82\x7d"  # 0x5050, 0x7D82 as two u16 (§2.1)
TCP_TOP = 8
HEADER = 8
# pyzk's largest request is a 1024-byte upload chunk; anything far beyond is not a ZK client
MAX_REQUEST = 64 * 1024

# pyzk splits bulk reads into chunks of this size (§9.3); UDP DATA datagrams carry at most 1024
UDP_DATA_MAX = 1024

RECORD_FORMATS = (40, 16, 8)
USER_FORMATS = (72, 28)
STATUS_BLOCK = 92

_HEADER = struct.Struct("<4H")
_TOP = struct.Struct("<4sI")
_REC40 = struct.Struct("<H24sBIB8s")
_REC16 = struct.Struct("<IIBB2sI")
_REC8 = struct.Struct("<HBIB")
_USER72 = struct.Struct("<HB8s24sIB7sx24s")
_USER28 = struct.Struct("<HB5s8sIxBhI")
_REC40_TAIL = b"\x00\x00\x00\x00\xff\x00\x00\x00"  # what real 40-byte records carry (§10.1)


class ProtocolError(ValueError):
    """Bytes from a client that cannot be a ZK packet (bad magic, bad or oversized length)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded command packet."""

    command: int
    checksum: int
    session: int
    reply: int
    data: bytes


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The standard ZK checksum (§4) of header-with-zero-checksum plus data.

    The one's-complement sum of 16-bit words equals the little-endian integer modulo 0xFFFF
    (2**16 ≡ 1), which lets C do the work for 64 KB chunks; odd lengths pad with a high zero
    byte, which the integer form already implies.
    """
    value = int.from_bytes(data, "little")
    folded = value % 0xFFFF
    if folded == 0 and value:
        folded = 0xFFFF  # end-around-carry arithmetic never folds a non-zero sum to 0
    return ~folded & 0xFFFF


def packet(command: int, session: int, reply: int, data: bytes | memoryview = b"") -> bytes:
    """Build header + data with a correct checksum."""
    body = _HEADER.pack(command, 0, session, reply) + data
    return body[:2] + struct.pack("<H", checksum(body)) + body[4:]


def tcp_frame(pkt: bytes, *, length: int | None = None) -> bytes:
    """Prefix a packet with the TCP top; ``length`` overrides the length field (fault injection)."""
    return _TOP.pack(MAGIC, len(pkt) if length is None else length) + pkt


def parse_packet(raw: bytes) -> Packet:
    """Decode header + data; raise ProtocolError when shorter than a header."""
    if len(raw) < HEADER:
        raise ProtocolError(f"packet of {len(raw)} bytes is shorter than the 8-byte header")
    command, chk, session, reply = _HEADER.unpack_from(raw)
    return Packet(command, chk, session, reply, bytes(raw[HEADER:]))


class TcpDeframer:
    """Split a TCP byte stream into packets by magic + length, buffering partial reads."""

    def __init__(self, max_length: int = MAX_REQUEST) -> None:
        self._buf = bytearray()
        self._max = max_length

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every complete packet (header + data); raise ProtocolError on a bad stream."""
        self._buf += chunk
        while len(self._buf) >= TCP_TOP:
            magic, length = _TOP.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad TCP magic {bytes(magic).hex()}")
            if length < HEADER or length > self._max:
                raise ProtocolError(f"TCP length {length} outside {HEADER}..{self._max}")
            end = TCP_TOP + length
            if len(self._buf) < end:
                return
            raw = bytes(self._buf[TCP_TOP:end])
            del self._buf[:end]
            yield raw

    @property
    def pending(self) -> int:
        """Bytes received but not yet a whole packet."""
        return len(self._buf)


def make_commkey(key: int, session: int, ticks: int = 50) -> bytes:
    """pyzk's ``make_commkey`` (from ZK's commpro.c MakeKey), §6.2."""
    reversed_key = int(f"{key & 0xFFFFFFFF:032b}"[::-1], 2)
    k = struct.pack("<I", (reversed_key + session) & 0xFFFFFFFF)
    k = bytes(a ^ b for a, b in zip(k, b"ZKSO", strict=True))
    k = k[2:4] + k[0:2]
    b = ticks & 0xFF
    return bytes((k[0] ^ b, k[1] ^ b, b, k[3] ^ b))


def check_commkey(key: int, session: int, data: bytes) -> bool:
    """True when ``data`` (CMD_AUTH payload) is the comm key for this session, any tick value."""
    return len(data) >= 4 and data[:4] == make_commkey(key, session, data[2])


def encode_time(t: datetime) -> int:
    """Packed device time (§10.3): every month counts 31 days; years 2000-2099."""
    days = (t.year % 100) * 12 * 31 + (t.month - 1) * 31 + (t.day - 1)
    return days * 86400 + (t.hour * 60 + t.minute) * 60 + t.second


# The inverse of encode_time is the pull producer's own decoder (one reading of the format for
# both sides); raises ValueError for impossible dates such as 31 February.
decode_time = decode_packed_time


def timehex(t: datetime) -> bytes:
    """The 6-byte realtime time field: year-2000, month, day, hour, minute, second (§11.4)."""
    return bytes((t.year - 2000, t.month, t.day, t.hour, t.minute, t.second))


def _pin(user_code: str, size: int = 24) -> bytes:
    raw = user_code.encode()
    if len(raw) >= size:
        raise ValueError(f"user code {user_code!r} longer than {size - 1} bytes")
    return raw


def encode_record(fmt: int, uid: int, user_code: str, t: datetime, state: int, verify: int) -> bytes:
    """One attendance record in the 40-, 16- or 8-byte layout (§10.1).

    40 and 8 bytes put the verify method where pyzk reads ``status`` and the state in ``punch``;
    the 16-byte TExtendAttLog has them the other way round, as real firmware does.
    """
    packed = encode_time(t)
    if fmt == 40:
        return _REC40.pack(uid, _pin(user_code), verify, packed, state, _REC40_TAIL)
    if fmt == 16:
        return _REC16.pack(int(user_code), packed, state, verify, b"\x00\x00", 0)
    if fmt == 8:
        return _REC8.pack(uid, verify, packed, state)
    raise ValueError(f"record format {fmt} is not one of {RECORD_FORMATS}")


# where each record format keeps its u32 packed time
TIME_OFFSET = {40: 27, 16: 4, 8: 3}


def records_at(fmt: int, buf: bytes | bytearray, packed_time: int) -> list[RawRecord]:
    """The records of ``buf`` stamped ``packed_time``, found by byte search rather than decoding."""
    needle, offset, out = struct.pack("<I", packed_time), TIME_OFFSET[fmt], []
    pos = buf.find(needle)
    while pos >= 0:
        start = pos - offset
        if start >= 0 and start % fmt == 0:
            out.extend(decode_records(fmt, bytes(buf[start : start + fmt])))
        pos = buf.find(needle, pos + 1)
    return out


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A decoded record; a format stores the uid or the user code, never both (16 and 8 bytes)."""

    uid: int | None
    user_code: str | None
    packed_time: int
    state: int
    verify: int


def decode_records(fmt: int, buf: bytes | bytearray | memoryview) -> list[RawRecord]:
    """Decode back-to-back records of one format (no length prefix)."""
    if fmt == 40:
        return [
            RawRecord(uid, code.split(b"\x00", 1)[0].decode(), t, state, verify)
            for uid, code, verify, t, state, _ in _REC40.iter_unpack(buf)
        ]
    if fmt == 16:
        return [RawRecord(None, str(pin), t, state, verify) for pin, t, state, verify, _, _ in _REC16.iter_unpack(buf)]
    if fmt == 8:
        return [RawRecord(uid, None, t, state, verify) for uid, verify, t, state in _REC8.iter_unpack(buf)]
    raise ValueError(f"record format {fmt} is not one of {RECORD_FORMATS}")


def encode_user(fmt: int, uid: int, user_code: str, name: str, *, privilege: int = 0,
                password: str = "", card: int = 0, group: int = 1) -> bytes:
    """One user in the 72-byte (ZK8) or 28-byte (ZK6, numeric PIN) layout (§10.4)."""
    if fmt == 72:
        # the time-zone block pyzk reads as group_id (bytes 40-46) stays zero: clean output
        return _USER72.pack(uid, privilege, password.encode()[:8], name.encode()[:23], card, group,
                            b"", _pin(user_code))
    if fmt == 28:
        return _USER28.pack(uid, privilege, password.encode()[:5], name.encode()[:8], card, group, 0,
                            int(user_code))
    raise ValueError(f"user format {fmt} is not one of {USER_FORMATS}")


def status_block(*, users: int, records: int, users_cap: int, records_cap: int,
                 fingers: int = 0, fingers_cap: int = 3000, faces: int = 0, faces_cap: int = 0) -> bytes:
    """The 92-byte CMD_GET_FREE_SIZES reply (§8): 23 int32, unused words zero."""
    words = [0] * 23
    words[4], words[6], words[8] = users, fingers, records
    words[14], words[15], words[16] = fingers_cap, users_cap, records_cap
    words[17] = max(fingers_cap - fingers, 0)
    words[18] = max(users_cap - users, 0)
    words[19] = max(records_cap - records, 0)
    words[20], words[22] = faces, faces_cap
    return struct.pack("<23i", *words)


def data_stat(total: int) -> bytes:
    """The 13-byte ACK_OK data of a buffered 1503 reply: size at bytes 1-4 (§9.2b)."""
    return struct.pack("<BIII", 0, total, total, 0)


def parse_buffer_request(data: bytes) -> tuple[int, int]:
    """(sub-command, fct) of a 1503 request; raise ProtocolError when malformed."""
    if len(data) < 11:
        raise ProtocolError(f"1503 request of {len(data)} bytes, expected 11")
    _, sub, fct, _ = struct.unpack_from("<bhii", data)
    return sub, fct


def parse_read_request(data: bytes) -> tuple[int, int]:
    """(start, size) of a 1504 request; raise ProtocolError when malformed."""
    if len(data) < 8:
        raise ProtocolError(f"1504 request of {len(data)} bytes, expected 8")
    start, size = struct.unpack_from("<ii", data)
    return start, size


def prepare_data(size: int) -> bytes:
    """The 8-byte CMD_PREPARE_DATA payload: chunk size and 0x10 (a 4-byte one breaks pyzk, §9.4)."""
    return struct.pack("<II", size, 0x10)


def realtime_attlog(user_code: str, t: datetime, state: int, verify: int, *, udp: bool) -> bytes:
    """EF_ATTLOG event data: 36 bytes (TCP) or 12 bytes (UDP, numeric code) (§11.4, §13).

    pyzk reports the first small byte as ``status`` and the second as ``punch``; like the
    40-byte record, the verify method goes first.
    """
    if udp and user_code.isdigit() and int(user_code) <= 0xFFFFFFFF:
        return struct.pack("<IBB6s", int(user_code), verify, state, timehex(t))
    return struct.pack("<24sBB6s4s", _pin(user_code), verify, state, timehex(t), b"")


def event_packet(data: bytes, event: int = EF_ATTLOG) -> bytes:
    """A realtime event: command 500, session field = event code, reply id 0 (§11.3)."""
    return packet(CMD_REG_EVENT, event, 0, data)


def u32(data: bytes, default: int = 0) -> int:
    """The leading u32 of a payload, or ``default`` when too short."""
    return int(struct.unpack_from("<I", data)[0]) if len(data) >= 4 else default
