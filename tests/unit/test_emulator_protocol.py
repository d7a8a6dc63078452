"""The emulator's codec against the reference's test vectors and pyzk's own struct layouts."""

from __future__ import annotations

import random
import struct
from datetime import datetime

import pytest
from zk.base import make_commkey as pyzk_make_commkey

from emulator import protocol as p


def test_checksum_adro_vectors() -> None:
    face = bytes.fromhex("0b000000f38d0300") + b"ZKFaceVersion\x00"
    assert p.checksum(face) == 0x175A
    assert p.checksum(bytes.fromhex("d0070000f38d0a0009")) == 0x6A29  # odd length


def _reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"<{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_checksum_matches_the_word_sum_definition() -> None:
    rng = random.Random(7)
    samples = [b"", b"\x00" * 8, b"\xff" * 8, b"\xff\xff\x00\x00", b"\x01"]
    samples += [rng.randbytes(rng.randint(1, 300)) for _ in range(500)]
    for data in samples:
        assert p.checksum(data) == _reference_checksum(data), data.hex()


def test_packet_carries_its_checksum_and_parses_back() -> None:
    raw = p.packet(p.CMD_ACK_OK, 0x3C1A, 7, b"abc")
    parsed = p.parse_packet(raw)
    assert (parsed.command, parsed.session, parsed.reply, parsed.data) == (2000, 0x3C1A, 7, b"abc")
    assert p.checksum(raw[:2] + b"\x00\x00" + raw[4:]) == parsed.checksum
    # the reference's capture: ACK_OK for session 0x3c1a, reply 0 has checksum 0xbc15
    assert p.packet(p.CMD_ACK_OK, 0x3C1A, 0) == bytes.fromhex("d00715bc1a3c0000")


def test_tcp_frame_and_deframer_buffering() -> None:
    first = p.tcp_frame(p.packet(p.CMD_CONNECT, 0, 0))
    assert first == bytes.fromhex("5050827d08000000e80317fc00000000")
    second = p.tcp_frame(p.packet(p.CMD_OPTIONS_RRQ, 5, 1, b"~SerialNumber\x00"))
    deframer = p.TcpDeframer()
    stream = first + second
    out = [raw for i in range(len(stream)) for raw in deframer.feed(stream[i : i + 1])]  # byte by byte
    assert [p.parse_packet(r).command for r in out] == [p.CMD_CONNECT, p.CMD_OPTIONS_RRQ]
    assert list(deframer.feed(first + second + first[:5])) and deframer.pending == 5  # several in one read


@pytest.mark.parametrize("stream", [
    b"GET / HTTP/1.1\r\n\r\n",
    p.MAGIC + struct.pack("<I", 10_000_000),
    p.MAGIC + struct.pack("<I", 4) + b"abcd",
])
def test_deframer_rejects_non_zk_streams(stream: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        list(p.TcpDeframer().feed(stream))


def test_commkey_reference_examples_and_pyzk_equivalence() -> None:
    assert p.make_commkey(123456, 0x3C1A) == bytes.fromhex("267f32c5")
    assert p.make_commkey(0, 0x3C1A) == bytes.fromhex("617d3245")
    rng = random.Random(1)
    for _ in range(300):
        key, session, ticks = rng.randint(0, 999_999), rng.randint(0, 0xFFFF), rng.randint(0, 255)
        ours = p.make_commkey(key, session, ticks)
        assert ours == pyzk_make_commkey(key, session, ticks)
        assert p.check_commkey(key, session, ours)
    assert not p.check_commkey(123456, 0x3C1A, p.make_commkey(123457, 0x3C1A))
    assert not p.check_commkey(123456, 0x3C1A, b"\x26\x7f")


def test_packed_time() -> None:
    t = datetime(2024, 3, 15, 8, 30, 5)
    assert p.encode_time(t) == 777_976_205
    assert struct.pack("<I", p.encode_time(t)) == bytes.fromhex("8df95e2e")
    assert p.decode_time(777_976_205) == t
    assert p.decode_time(0x2368B36B) == datetime(2018, 6, 25, 17, 50, 35)
    with pytest.raises(ValueError):
        p.decode_time(p.encode_time(datetime(2024, 3, 1)) - 86400)  # "31 February"
    assert p.timehex(datetime(2018, 6, 25, 17, 41, 5)) == bytes.fromhex("120619112905")


def test_record_layouts_as_pyzk_unpacks_them() -> None:
    t = datetime(2024, 3, 15, 8, 30, 5)
    rec40 = p.encode_record(40, 7, "1007", t, state=1, verify=15)
    uid, code, status, packed, punch, tail = struct.unpack("<H24sB4sB8s", rec40)
    assert (uid, code.rstrip(b"\x00"), status, punch) == (7, b"1007", 15, 1)
    assert packed == bytes.fromhex("8df95e2e") and tail == bytes.fromhex("00000000ff000000")
    rec16 = p.encode_record(16, 7, "1007", t, state=1, verify=15)
    pin, packed16, status16, punch16, _, workcode = struct.unpack("<I4sBB2sI", rec16)
    assert (pin, packed16, status16, punch16, workcode) == (1007, packed, 1, 15, 0)  # state first
    rec8 = p.encode_record(8, 7, "1007", t, state=1, verify=15)
    assert struct.unpack("HB4sB", rec8) == (7, 15, packed, 1)
    for fmt, rec in ((40, rec40), (16, rec16), (8, rec8)):
        (raw,) = p.decode_records(fmt, rec)
        assert (raw.packed_time, raw.state, raw.verify) == (777_976_205, 1, 15)
    with pytest.raises(ValueError):
        p.encode_record(16, 1, "A-17", t, 0, 1)  # the 16-byte record stores a numeric PIN


def test_user_layouts_as_pyzk_unpacks_them() -> None:
    u72 = p.encode_user(72, 3, "1003", "User 1003", privilege=14, password="12", card=555)
    uid, priv, pw, name, card, group_id, user_id = struct.unpack("<HB8s24sIx7sx24s", u72)
    assert (uid, priv, pw.rstrip(b"\x00"), name.rstrip(b"\x00"), card) == (3, 14, b"12", b"User 1003", 555)
    assert group_id == b"\x00" * 7 and user_id.rstrip(b"\x00") == b"1003"
    u28 = p.encode_user(28, 3, "1003", "U1003")
    assert len(u28) == 28
    uid, priv, pw, name, card, group, tz, pin = struct.unpack("<HB5s8sIxBhI", u28)
    assert (uid, name.rstrip(b"\x00"), group, pin) == (3, b"U1003", 1, 1003)


def test_status_block_fields_where_pyzk_reads_them() -> None:
    block = p.status_block(users=50, records=1234, users_cap=10_000, records_cap=100_000)
    assert len(block) == 92
    fields = struct.unpack("20i", block[:80])
    assert (fields[4], fields[8], fields[15], fields[16]) == (50, 1234, 10_000, 100_000)
    assert (fields[18], fields[19]) == (9_950, 98_766)


def test_realtime_payloads() -> None:
    t = datetime(2024, 3, 15, 9, 30, 5)
    tcp = p.realtime_attlog("1001", t, state=1, verify=15, udp=False)
    assert len(tcp) == 36
    assert struct.unpack("<24sBB6s4s", tcp)[1:4] == (15, 1, bytes.fromhex("18030f091e05"))
    udp = p.realtime_attlog("1001", t, state=1, verify=15, udp=True)
    assert struct.unpack("<IBB6s", udp) == (1001, 15, 1, bytes.fromhex("18030f091e05"))
    assert len(p.realtime_attlog("A-17", t, 0, 1, udp=True)) == 36  # non-numeric ids stay strings
    event = p.parse_packet(p.event_packet(tcp))
    assert (event.command, event.session, event.reply) == (500, 1, 0)


def test_bulk_helpers() -> None:
    assert p.data_stat(84) == bytes.fromhex("00540000005400000000000000")
    assert p.prepare_data(84) == bytes.fromhex("5400000010000000")
    assert p.parse_buffer_request(bytes.fromhex("010d000000000000000000")) == (13, 0)
    assert p.parse_read_request(bytes.fromhex("0000000054000000")) == (0, 84)
    with pytest.raises(p.ProtocolError):
        p.parse_read_request(b"\x00")


@pytest.mark.parametrize("fmt", [40, 16, 8])
def test_records_at_finds_only_aligned_time_fields(fmt: int) -> None:
    t = datetime(2024, 3, 15, 8, 30, 5)
    packed = struct.pack("<I", p.encode_time(t)).hex()
    # a user code whose bytes spell the same packed time must not count as a match
    decoy = p.encode_record(fmt, 1, "1001", datetime(2024, 3, 15, 8, 30, 6), 0, 1)
    if fmt == 40:
        decoy = p.encode_record(40, 1, bytes.fromhex(packed).decode("latin-1"), datetime(2024, 3, 16), 0, 1)
    buf = decoy + p.encode_record(fmt, 2, "1002", t, 1, 1) + p.encode_record(fmt, 3, "1003", t, 4, 1)
    assert [r.state for r in p.records_at(fmt, buf, p.encode_time(t))] == [1, 4]
