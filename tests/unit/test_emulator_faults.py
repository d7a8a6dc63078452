"""Every FaultKind as unmodified pyzk experiences it, and the device healthy afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from zk.exception import ZKErrorResponse, ZKNetworkError

from emulator import protocol as p
from emulator.device import DeviceConfig, FaultKind
from emulator.fleet import ThreadedFleet
from emulator.testing import connected, live_events

SERIALS = ["DROP", "STALL", "STALL2", "GARBAGE", "TRUNC", "WRONG", "GLIVE", "SLIVE", "SKIP", "UDPF", "BAD", "GOOD"]


@pytest.fixture(scope="module")
def fleet() -> Iterator[ThreadedFleet]:
    with ThreadedFleet([DeviceConfig(s, users=5, log_size=200) for s in SERIALS]) as fleet:
        yield fleet


def healthy(fleet: ThreadedFleet, serial: str, *, udp: bool = False) -> None:
    with connected(fleet.port(serial), udp=udp) as conn:
        assert len(conn.get_attendance()) == len(fleet.records(serial))
        conn.disconnect()


def test_drop_closes_the_connection(fleet: ThreadedFleet) -> None:
    fleet.inject("DROP", FaultKind.DROP, on_command=p.CMD_GET_TIME)
    with connected(fleet.port("DROP")) as conn:
        assert conn.get_serialnumber() == "DROP"
        with pytest.raises(ZKNetworkError, match="TCP packet invalid"):  # pyzk reads EOF as b""
            conn.get_time()
    healthy(fleet, "DROP")


def test_drop_on_connect(fleet: ThreadedFleet) -> None:
    fleet.inject("DROP", "drop", on_command=p.CMD_CONNECT)
    with pytest.raises(ZKNetworkError), connected(fleet.port("DROP")):
        pass
    healthy(fleet, "DROP")


def test_short_stall_only_delays(fleet: ThreadedFleet) -> None:
    fleet.inject("STALL", FaultKind.STALL, on_command=p.CMD_GET_TIME, duration_s=0.5)
    with connected(fleet.port("STALL")) as conn:
        started = time.monotonic()
        conn.get_time()
        assert time.monotonic() - started >= 0.45
        assert conn.get_serialnumber() == "STALL"


def test_long_stall_times_pyzk_out(fleet: ThreadedFleet) -> None:
    fleet.inject("STALL2", FaultKind.STALL, on_command=p.CMD_READ_BUFFER, duration_s=1.5)
    with connected(fleet.port("STALL2"), timeout=1) as conn, pytest.raises(ZKNetworkError, match="timed out"):
        conn.get_attendance()
    time.sleep(0.6)
    healthy(fleet, "STALL2")


def test_garbage_reply(fleet: ThreadedFleet) -> None:
    fleet.inject("GARBAGE", FaultKind.GARBAGE, on_command=p.CMD_GET_TIME)
    with connected(fleet.port("GARBAGE")) as conn:
        with pytest.raises(ZKNetworkError, match="TCP packet invalid"):
            conn.get_time()
        assert conn.get_serialnumber() == "GARBAGE"  # one garbage packet in place of one reply


def test_truncated_reply_then_close(fleet: ThreadedFleet) -> None:
    fleet.inject("TRUNC", FaultKind.TRUNCATE, on_command=p.CMD_GET_TIME)
    with connected(fleet.port("TRUNC")) as conn, pytest.raises(ZKNetworkError):
        conn.get_time()
    # a sizes block cut below 80 bytes is silently ignored by pyzk: no records, no error
    fleet.inject("TRUNC", FaultKind.TRUNCATE, on_command=p.CMD_GET_FREE_SIZES)
    with connected(fleet.port("TRUNC")) as conn:
        assert conn.get_attendance() == []
        with pytest.raises(ZKNetworkError):  # only the next command finds the connection closed
            conn.get_time()
    healthy(fleet, "TRUNC")


def test_wrong_length(fleet: ThreadedFleet) -> None:
    fleet.inject("WRONG", FaultKind.WRONG_LENGTH, on_command=p.CMD_GET_TIME)
    with connected(fleet.port("WRONG")) as conn:
        conn.get_time()  # pyzk ignores the length field of plain replies
    # 5 users fit an inline CMD_DATA reply, whose length pyzk trusts: it waits for bytes never sent
    fleet.inject("WRONG", FaultKind.WRONG_LENGTH, on_command=p.CMD_PREPARE_BUFFER)
    with connected(fleet.port("WRONG"), timeout=1) as conn, pytest.raises(TimeoutError):
        conn.get_users()
    healthy(fleet, "WRONG")


def test_garbage_live_kills_pyzk_live_capture(fleet: ThreadedFleet) -> None:
    fleet.inject("GLIVE", FaultKind.GARBAGE_LIVE)
    with connected(fleet.port("GLIVE")) as conn, pytest.raises(UnboundLocalError):
        live_events(conn, lambda n: fleet.punch("GLIVE"), want=1)
    with connected(fleet.port("GLIVE")) as conn:  # a new session receives events again
        events = live_events(conn, lambda n: fleet.punch("GLIVE"), want=1)
        conn.disconnect()
    assert len(events) == 1 and len(fleet.records("GLIVE")) == 202  # the garbled punch is in the log
    healthy(fleet, "GLIVE")


def test_silent_live_swallows_events_for_a_while(fleet: ThreadedFleet) -> None:
    fleet.inject("SLIVE", FaultKind.SILENT_LIVE, duration_s=1.0)
    punched = []

    def punch(n: int) -> None:
        record = fleet.punch("SLIVE")
        assert record is not None
        punched.append(record)

    with connected(fleet.port("SLIVE")) as conn:
        events = live_events(conn, punch, want=1, new_timeout=0.3)
        conn.get_time()
        conn.disconnect()
    assert len(punched) >= 4  # ~1 s of idle timeouts passed before an event came through
    assert [(e.user_id, e.timestamp, e.punch) for e in events] == [
        (r.user_code, r.device_time, r.state) for r in punched[-1:]
    ]
    assert fleet.stats()["SLIVE"]["live_silenced"] == len(punched) - 1
    assert fleet.records("SLIVE")[-len(punched):] == punched  # the log has them all


def test_skip_and_count(fleet: ThreadedFleet) -> None:
    fleet.inject("SKIP", FaultKind.GARBAGE, on_command=p.CMD_GET_TIME, skip=1, count=2)
    with connected(fleet.port("SKIP")) as conn:
        conn.get_time()
        for _ in range(2):
            with pytest.raises(ZKNetworkError):
                conn.get_time()
        conn.get_time()
        conn.disconnect()
    assert fleet.stats()["SKIP"]["faults_fired"] == 2 and fleet.stats()["SKIP"]["faults_armed"] == 0


def test_faults_over_udp(fleet: ThreadedFleet) -> None:
    fleet.inject("UDPF", FaultKind.GARBAGE, on_command=p.CMD_GET_TIME)
    with connected(fleet.port("UDPF"), udp=True) as conn:
        with pytest.raises(ZKErrorResponse, match="can't get time"):
            conn.get_time()
        # UDP has no length field: a wrong-length reply is a datagram cut short, and pyzk
        # silently parses fewer users from it
        fleet.inject("UDPF", FaultKind.WRONG_LENGTH, on_command=p.CMD_PREPARE_BUFFER)
        assert 0 < len(conn.get_users()) < 5
        conn.disconnect()
    fleet.inject("UDPF", FaultKind.DROP, on_command=p.CMD_GET_TIME)
    with connected(fleet.port("UDPF"), udp=True, timeout=0.5) as conn:
        with pytest.raises(ZKNetworkError, match="timed out"):
            conn.get_time()
        with pytest.raises(ZKErrorResponse):  # the device forgot the session: not connected
            conn.get_time()
    healthy(fleet, "UDPF", udp=True)


def test_a_faulted_device_does_not_disturb_its_neighbour(fleet: ThreadedFleet) -> None:
    fleet.inject("BAD", FaultKind.DROP, count=1000)
    for _ in range(5):
        with pytest.raises(ZKNetworkError), connected(fleet.port("BAD")):
            pass
        healthy(fleet, "GOOD")
    assert fleet.stats()["GOOD"]["faults_fired"] == 0
