"""Unmodified pyzk 0.9 against the emulator on loopback: connect, read, download, live, admin."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from zk.exception import ZKErrorResponse, ZKNetworkError

from emulator import protocol as p
from emulator.device import DeviceConfig, LogRecord
from emulator.fleet import ThreadedFleet
from emulator.testing import HOST, connected, live_events, pyzk

CONFIGS = [
    DeviceConfig("BASIC", users=5, log_size=300, timezone="Asia/Dhaka", clock_offset_s=-120),
    DeviceConfig("KEY", comm_key=123456, log_size=50),
    DeviceConfig("R16", users=20, record_format=16, user_format=28, log_size=500),
    DeviceConfig("R8", users=20, record_format=8, user_format=28, log_size=500),
    DeviceConfig("R40U28", users=20, record_format=40, user_format=28, log_size=100),
    DeviceConfig("BIG", users=50, log_size=100_000),
    DeviceConfig("UDP", users=30, log_size=5_000),
    DeviceConfig("LIVE", users=5),
    DeviceConfig("CLOCK"),
    DeviceConfig("CLEAR", log_size=40),
    DeviceConfig("SINGLE", single_session=True),
    DeviceConfig("REBOOT", log_size=10, reboot_s=0.5),
    DeviceConfig("BUSY", users=20, log_size=20_000, rate_per_s=200.0),
    DeviceConfig("RAW"),
]


@pytest.fixture(scope="module")
def fleet() -> Iterator[ThreadedFleet]:
    with ThreadedFleet(CONFIGS) as fleet:
        yield fleet


def as_records(attendances: list[Any], *, swapped: bool = False) -> list[tuple[str, datetime, int, int]]:
    """pyzk Attendance -> (user_id, timestamp, state, verify); 16-byte records swap the two fields."""
    if swapped:
        return [(a.user_id, a.timestamp, a.status, a.punch) for a in attendances]
    return [(a.user_id, a.timestamp, a.punch, a.status) for a in attendances]


def expected(records: list[LogRecord]) -> list[tuple[str, datetime, int, int]]:
    return [(r.user_code, r.device_time, r.state, r.verify) for r in records]


def test_device_info(fleet: ThreadedFleet) -> None:
    with connected(fleet.port("BASIC")) as conn:
        assert conn.get_firmware_version() == "Ver 6.60 Apr 28 2015"
        assert conn.get_serialnumber() == "BASIC"
        assert conn.get_platform() == "ZEM600_TFT"
        assert conn.get_device_name() == "TapEmu"
        assert conn.get_mac() == CONFIGS[0].mac
        assert conn.get_pin_width() == 9
        assert (conn.get_face_version(), conn.get_fp_version()) == (7, 10)
        assert (conn.get_extend_fmt(), conn.get_user_extend_fmt()) == (1, 1)
        assert (conn.get_face_fun_on(), conn.get_compat_old_firmware()) == (0, 0)
        assert conn.get_network_params() == {"ip": HOST, "mask": "255.255.255.0", "gateway": "0.0.0.0"}
        assert conn.set_sdk_build_1() is True
        device_now = datetime.now(ZoneInfo("Asia/Dhaka")).replace(tzinfo=None) - timedelta(seconds=120)
        assert abs((conn.get_time() - device_now).total_seconds()) < 3
        conn.read_sizes()
        assert (conn.users, conn.records, conn.users_cap, conn.rec_cap) == (5, 300, 10_000, 100_000)
        assert conn.rec_av == 100_000 - 300
        conn.disable_device()
        conn.enable_device()
        conn.refresh_data()
        conn.test_voice()
        conn.unlock()
        conn.disconnect()


def test_comm_key(fleet: ThreadedFleet) -> None:
    with connected(fleet.port("KEY"), password=123456) as conn:
        assert conn.get_serialnumber() == "KEY"
        assert len(conn.get_attendance()) == 50
        conn.disconnect()
    for wrong in (0, 123457):
        with pyzk(fleet.port("KEY"), password=wrong) as client, pytest.raises(ZKErrorResponse, match="Unauthenticated"):
            client.connect()
    with connected(fleet.port("BASIC"), password=999) as conn:  # a key the device does not ask for
        assert conn.get_serialnumber() == "BASIC"


@pytest.mark.parametrize("serial, size", [("BASIC", 72), ("R16", 28), ("R8", 28), ("R40U28", 28)])
def test_users(fleet: ThreadedFleet, serial: str, size: int) -> None:
    with connected(fleet.port(serial)) as conn:
        users = conn.get_users()
    count = next(c.users for c in CONFIGS if c.serial == serial)
    assert [(u.uid, u.user_id) for u in users] == [(i, str(1000 + i)) for i in range(1, count + 1)]
    assert conn.user_packet_size == size
    assert all(u.name.startswith("U") and u.privilege == 0 for u in users)


@pytest.mark.parametrize("serial, udp", [("BASIC", False), ("R16", False), ("R8", False), ("R40U28", False),
                                         ("R16", True), ("R8", True), ("UDP", True)])
def test_attendance_formats(fleet: ThreadedFleet, serial: str, udp: bool) -> None:
    with connected(fleet.port(serial), udp=udp) as conn:
        attendances = conn.get_attendance()
        conn.disconnect()
    assert as_records(attendances, swapped=serial == "R16") == expected(fleet.records(serial))
    assert len({(a.user_id, a.timestamp, a.punch) for a in attendances}) == len(attendances)


def test_100k_records_over_tcp_in_seconds(fleet: ThreadedFleet) -> None:
    started = time.monotonic()
    with connected(fleet.port("BIG"), timeout=10) as conn:
        attendances = conn.get_attendance()
        conn.disconnect()
    elapsed = time.monotonic() - started
    assert len(attendances) == 100_000
    assert as_records(attendances) == expected(fleet.records("BIG"))
    assert elapsed < 15, f"100,000 records took {elapsed:.1f} s"


def test_download_while_punches_arrive(fleet: ThreadedFleet) -> None:
    """Counts and buffers come from one snapshot, so pyzk never mis-splits records."""
    with connected(fleet.port("BUSY")) as conn:
        for _ in range(3):
            attendances = conn.get_attendance()
            records = fleet.records("BUSY")
            assert as_records(attendances) == expected(records[: len(attendances)])
            assert len(attendances) >= 20_000
        conn.disconnect()
    fleet.set_rate(0.0, "BUSY")
    assert fleet.stats()["BUSY"]["punches_generated"] == len(fleet.generated("BUSY"))


@pytest.mark.parametrize("udp", [False, True])
def test_live_capture(fleet: ThreadedFleet, udp: bool) -> None:
    with connected(fleet.port("LIVE"), udp=udp) as conn:
        punched = []

        def punch(n: int) -> None:
            if n < 3:
                record = fleet.punch("LIVE", user_code="1002" if n else "1001", state=None if n < 2 else 4)
                assert record is not None
                punched.append(record)

        events = live_events(conn, punch, want=3)
        conn.get_time()  # the session is clean after live capture ended
        conn.disconnect()
    assert [(a.user_id, a.timestamp, a.punch, a.status) for a in events] == expected(punched)
    assert [a.uid for a in events] == [r.uid for r in punched]
    stats = fleet.stats()["LIVE"]
    assert stats["live_acked"] == stats["live_sent"] and stats["live_sessions"] == 0


def test_set_time_moves_the_clock(fleet: ThreadedFleet) -> None:
    target = datetime(2031, 7, 4, 12, 0, 0)
    with connected(fleet.port("CLOCK")) as conn:
        conn.set_time(target)
        assert abs((conn.get_time() - target).total_seconds()) < 3
        conn.disconnect()
    record = fleet.punch("CLOCK")
    assert record is not None and abs((record.device_time - target).total_seconds()) < 3


def test_clear_attendance(fleet: ThreadedFleet) -> None:
    with connected(fleet.port("CLEAR")) as conn:
        assert len(conn.get_attendance()) == 40
        conn.clear_attendance()
        assert conn.get_attendance() == []
        fleet.punch("CLEAR")
        assert len(conn.get_attendance()) == 1
        conn.disconnect()
    assert len(fleet.records("CLEAR")) == 1 and len(fleet.generated("CLEAR")) == 41


def test_single_session(fleet: ThreadedFleet) -> None:
    port = fleet.port("SINGLE")
    with connected(port) as first:
        with pyzk(port) as second, pytest.raises(ZKErrorResponse, match="Can't connect"):
            second.connect()
        first.disconnect()
    with connected(port) as again:
        assert again.get_serialnumber() == "SINGLE"
        again.disconnect()


def test_reboot_refuses_then_recovers(fleet: ThreadedFleet) -> None:
    port = fleet.port("REBOOT")
    with connected(port) as conn:
        fleet.reboot("REBOOT", down_s=1.0)
        with pytest.raises(ZKNetworkError):
            conn.get_time()
    with pyzk(port) as client, pytest.raises(ZKNetworkError):
        client.connect()
    assert fleet.punch("REBOOT") is None  # nobody can punch a switched-off terminal
    time.sleep(1.2)
    with connected(port) as conn:
        assert len(conn.get_attendance()) == 10
        conn.restart()  # CMD_RESTART: acknowledged, then down for reboot_s (0.5 s)
    with pyzk(port) as client, pytest.raises(ZKNetworkError):
        client.connect()
    time.sleep(0.7)
    with connected(port) as conn:
        assert conn.get_serialnumber() == "REBOOT"
    assert fleet.stats()["REBOOT"]["reboots"] == 2


def _raw(port: int, payload: bytes) -> bytes:
    """Send bytes, half-close, return everything the device says before it closes."""
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def test_misbehaving_clients_cost_one_connection(fleet: ThreadedFleet) -> None:
    port = fleet.port("RAW")
    with socket.create_connection((HOST, port)):  # pyzk's probe: connect, close, no data
        pass
    assert _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert _raw(port, p.MAGIC + struct.pack("<I", 50_000_000)) == b""
    assert _raw(port, p.MAGIC + struct.pack("<I", 100) + b"\x01\x02") == b""  # truncated, then closed
    unknown = _raw(port, p.tcp_frame(p.packet(9999, 0, 3)))
    assert p.parse_packet(unknown[8:16]).command == p.CMD_ACK_UNAUTH  # not connected yet
    two = p.tcp_frame(p.packet(p.CMD_CONNECT, 0, 0)) + p.tcp_frame(p.packet(9999, 0, 1))
    replies = _raw(port, two)  # two packets in one segment
    assert [p.parse_packet(replies[i + 8 : i + 16]).command for i in (0, 16)] == [p.CMD_ACK_OK, p.CMD_ACK_UNKNOWN]
    with connected(port) as conn:
        assert conn.get_serialnumber() == "RAW"
        conn.disconnect()
    stats = fleet.stats()["RAW"]
    assert stats["bad_packets"] == 2 and stats["sessions_open"] == 0
