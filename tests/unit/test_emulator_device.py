"""Device state without sockets: log, wrap, uniqueness, clock, faults plan, config parsing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from emulator import config
from emulator.device import Device, DeviceConfig, FaultKind, LogRecord
from emulator.faults import FaultPlan, make_fault


def keys(records: list[LogRecord]) -> list[tuple[str, datetime, int]]:
    return [(r.user_code, r.device_time, r.state) for r in records]


@pytest.mark.parametrize("fmt", [40, 16, 8])
def test_preload_is_ascending_unique_and_decodes(fmt: int) -> None:
    device = Device(DeviceConfig("P1", users=7, log_size=2000, record_format=fmt))
    records = device.records()
    assert len(records) == 2000 and [r.index for r in records] == list(range(2000))
    times = [r.device_time for r in records]
    assert times == sorted(times) and len(set(times)) == 2000
    assert times[-1] < device.now()
    assert {r.user_code for r in records} <= {str(1001 + i) for i in range(7)}
    assert all(r.uid == int(r.user_code) - 1000 and r.verify == 1 for r in records)
    for code in {r.user_code for r in records}:  # alternating in/out per user
        states = [r.state for r in records if r.user_code == code]
        assert states == [i % 2 for i in range(len(states))]
    snap = device.snapshot()
    assert snap.record_count == 2000 and len(snap.records) == 2000 * fmt
    assert snap.user_count == 7


def test_same_second_punches_stay_unique() -> None:
    device = Device(DeviceConfig("P1", users=3))
    made = [device.punch(user_code="1001") for _ in range(20)]
    assert all(r is not None for r in made)
    assert len(set(keys(device.records()))) == 20
    assert [r.state for r in device.records()][:2] == [0, 1]
    generated = [device.punch() for _ in range(300)]
    assert len(set(keys(device.generated()))) == 20 + sum(r is not None for r in generated)


def test_explicit_times_refuse_only_true_duplicates() -> None:
    device = Device(DeviceConfig("P1"))
    at = datetime(2024, 5, 1, 9, 0, 0)
    first = device.punch(user_code="1002", state=0, at=at)
    assert first is not None and first.device_time == at
    assert device.punch(user_code="1002", state=0, at=at) is None
    assert device.counters["duplicates_refused"] == 1
    assert device.punch(user_code="1002", state=1, at=at) is not None
    later = device.punch(user_code="1002", state=0, at=at + timedelta(hours=1))
    assert later is not None
    earlier = device.punch(user_code="1002", at=at)  # before the user's latest: scanned, a free state
    assert earlier is not None and earlier.state not in (0, 1)
    assert len(set(keys(device.records()))) == len(device.records()) == 4


def test_wrap_keeps_history_and_stop_refuses() -> None:
    wrap = Device(DeviceConfig("W", capacity=5, log_size=3))
    for _ in range(5):
        assert wrap.punch() is not None
    assert [r.index for r in wrap.records()] == [3, 4, 5, 6, 7]
    assert len(wrap.generated()) == 8 and wrap.snapshot().record_count == 5
    stop = Device(DeviceConfig("S", capacity=5, log_size=3, on_full="stop"))
    results = [stop.punch() for _ in range(4)]
    assert [r is not None for r in results] == [True, True, False, False]
    assert len(stop.records()) == 5 and stop.counters["punches_refused"] == 2
    stop.clear_log()
    assert stop.records() == [] and len(stop.generated()) == 5
    assert stop.punch() is not None and stop.records()[0].index == 5


def test_preload_beyond_capacity() -> None:
    assert len(Device(DeviceConfig("W", capacity=10, log_size=25)).records()) == 10
    stop = Device(DeviceConfig("S", capacity=10, log_size=25, on_full="stop"))
    assert len(stop.generated()) == 10 and stop.counters["punches_refused"] == 15


def test_clock_zone_offset_and_set() -> None:
    device = Device(DeviceConfig("C", timezone="Asia/Dhaka", clock_offset_s=-3600))
    expected = datetime.now(ZoneInfo("Asia/Dhaka")).replace(tzinfo=None) - timedelta(hours=1)
    assert abs((device.now() - expected).total_seconds()) <= 2
    device.set_clock(datetime(2031, 1, 2, 3, 4, 5))
    assert abs((device.now() - datetime(2031, 1, 2, 3, 4, 5)).total_seconds()) <= 2
    record = device.punch()
    assert record is not None and record.device_time.year == 2031


def test_user_codes_enroll_and_formats_validate() -> None:
    device = Device(DeviceConfig("U", users=2, record_format=40))
    record = device.punch(user_code="A-17")
    assert record is not None and record.uid == 3 and device.records()[0].user_code == "A-17"
    numeric = Device(DeviceConfig("N", users=2, record_format=16))
    with pytest.raises(ValueError, match="numeric"):
        numeric.punch(user_code="A-17")
    eight = Device(DeviceConfig("E", users=2, record_format=8))
    assert eight.punch(user_code="555") is not None
    assert eight.records()[0].user_code == "555" and eight.records()[0].uid == 3
    assert Device(DeviceConfig("Z", users=0)).punch() is None


def test_fault_plan_skip_count_and_command_filter() -> None:
    plan = FaultPlan()
    plan.arm(make_fault("drop", count=2, on_command=201, skip=1))
    plan.arm(make_fault(FaultKind.GARBAGE_LIVE))
    assert plan.take(11) is None  # another command
    assert plan.take(201) is None  # skipped
    first, second = plan.take(201), plan.take(201)
    assert first is not None and second is not None and first.kind is FaultKind.DROP
    assert plan.take(201) is None and plan.armed == 1
    live = plan.take(None)
    assert live is not None and live.kind is FaultKind.GARBAGE_LIVE and plan.armed == 0
    assert plan.fired == 3
    with pytest.raises(ValueError, match="unknown fault kind"):
        make_fault("explode")
    with pytest.raises(ValueError):
        make_fault("drop", count=0)


@pytest.mark.parametrize("bad", [
    {"record_format": 32}, {"user_format": 40}, {"on_full": "panic"}, {"timezone": "Mars/Base"},
    {"users": 20, "users_capacity": 10}, {"serial": ""}, {"rate_per_s": -1},
])
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        config.make_config({"serial": "X1", **bad}, where="test")


def test_config_numbered_and_file(tmp_path: Path) -> None:
    devices = config.numbered(3, base_port=5000, prefix="GATE", users=5)
    assert [(d.serial, d.port, d.users) for d in devices] == [("GATE0001", 5000, 5), ("GATE0002", 5001, 5),
                                                            ("GATE0003", 5002, 5)]
    assert devices[0].mac.startswith("00:17:61:") and devices[0].mac != devices[1].mac
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({
        "defaults": {"users": 9, "timezone": "Asia/Dhaka"},
        "devices": [{"serial": "A1", "port": 0}, {"serial": "B2", "users": 3, "comm_key": 42}],
    }))
    a, b = config.from_file(path, base_port=6000, rate_per_s=0.5, users=1)
    assert (a.port, a.users, a.timezone, a.rate_per_s) == (0, 9, "Asia/Dhaka", 0.5)
    assert (b.port, b.users, b.comm_key) == (6001, 3, 42)
    path.write_text(json.dumps({"devices": [{"serial": "A1", "colour": "red"}]}))
    with pytest.raises(ValueError, match="unknown fields"):
        config.from_file(path, base_port=6000)
    path.write_text(json.dumps({"devices": [{"serial": "A1", "users": "many"}]}))
    with pytest.raises(ValueError, match="users must be int"):
        config.from_file(path, base_port=6000)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        config.from_file(path, base_port=6000)


def test_clock_set_back_keeps_punches_unique() -> None:
    device = Device(DeviceConfig("B", users=2, log_size=500))
    for _ in range(30):
        device.punch()
    device.set_clock(device.now() - timedelta(hours=3))
    made = [device.punch() for _ in range(60)]
    assert all(r is not None for r in made)
    all_keys = keys(device.generated())
    assert len(set(all_keys)) == len(all_keys) == 590
