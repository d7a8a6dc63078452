"""The pull device worker's logic with a fake device: catch-up by mark, live, failures, health."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from producers.pull.client import DeviceFacts
from producers.pull.device import DeviceWorker, mark_key
from producers.pull.health import Health
from producers.pull.records import BadEntry, Entry, LogEntry
from producers.pull.writer import SpoolWriter
from producers.registry import DeviceInfo
from producers.spool import Spool, SpoolRecord
from schemas.codec import decode
from schemas.device_status import DeviceStatus, LinkState
from schemas.punch import PunchSource, RawPunch
from schemas.quarantine import QuarantineRecord, Reason
from tapstream.errors import DeviceError
from tapstream.settings import PullSettings, Settings

SERIAL = "EMU0001"
DEVICE = DeviceInfo(SERIAL, "Gate", "pull", "Asia/Dhaka", "HQ", True, "127.0.0.1", 4370)
BASE = datetime(2026, 11, 23, 8, 0, 0)


def entry(i: int) -> LogEntry:
    return LogEntry(i, b"record-%06d" % i, str(1000 + i % 7), BASE + timedelta(seconds=i), i % 2, 1)


@dataclass
class FakeDevice:
    """What the fake client reads: a log, a queue of live events, and scripted failures."""

    log: list[Entry] = field(default_factory=list)
    live: queue.Queue[Entry | Exception] = field(default_factory=queue.Queue)
    serial: str = SERIAL
    fail_connects: int = 0
    connects: int = 0


class FakeClient:
    def __init__(self, device: FakeDevice) -> None:
        self.d = device
        self.where = "tcp://fake:4370"
        self._end = False

    def connect(self) -> None:
        self.d.connects += 1
        if self.d.fail_connects > 0:
            self.d.fail_connects -= 1
            raise DeviceError(f"{self.where}: cannot connect: refused")

    def facts(self, timezone: str) -> DeviceFacts:
        return DeviceFacts(self.d.serial, "Ver 6.60", "ZEM600_TFT", 7, 1000, len(self.d.log), 100_000, -42.5)

    def download(self) -> list[Entry]:
        return list(self.d.log)

    def live(self, tick_s: float) -> Iterator[Entry | None]:
        while not self._end:
            try:
                item = self.d.live.get(timeout=tick_s)
            except queue.Empty:
                yield None
                continue
            if isinstance(item, Exception):
                raise item
            yield item

    def end_live(self) -> None:
        self._end = True

    def close(self) -> None:
        pass


class FakeOutput:
    """Records what the worker emits; marks are durable at once (like the writer after a commit)."""

    def __init__(self) -> None:
        self.records: list[SpoolRecord] = []
        self.marks: dict[str, str] = {}
        self.lock = threading.Lock()

    def emit(self, records: Sequence[SpoolRecord], marks: Mapping[str, str] | None = None,
             on_durable: Callable[[], None] | None = None) -> None:
        with self.lock:
            self.records.extend(records)
            self.marks.update(marks or {})
        if on_durable:
            on_durable()

    def mark(self, key: str) -> str | None:
        return self.marks.get(key)

    def punches(self) -> list[RawPunch]:
        with self.lock:
            return [decode(RawPunch, v) for t, _k, v in self.records if t == "attendance.raw"]

    def statuses(self) -> list[DeviceStatus]:
        with self.lock:
            return [decode(DeviceStatus, v) for t, _k, v in self.records if t == "devices.status"]


def fast_settings(**pull: Any) -> Settings:
    base = dict(timeout_s=1.0, live_tick_s=0.02, catchup_interval_s=60.0, info_refresh_s=60.0,
                backoff_initial_s=0.01, backoff_max_s=0.05, status_interval_s=60.0)
    return Settings(pull=PullSettings(**{**base, **pull}))


def start(worker: DeviceWorker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_catch_up_produces_the_log_once_then_only_what_is_new() -> None:
    device, out = FakeDevice(log=[entry(i) for i in range(5)]), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(), out, client_factory=lambda d, t: FakeClient(device))
    worker.catch_up(FakeClient(device))
    device.log += [entry(5), entry(6)]
    worker.catch_up(FakeClient(device))
    punches = out.punches()
    assert [p.device_time for p in punches] == [BASE + timedelta(seconds=i) for i in range(7)]
    assert {p.source for p in punches} == {PunchSource.PULL_POLL}
    assert out.marks[mark_key(SERIAL)].startswith("7:")
    assert punches[0].device_tz == "Asia/Dhaka" and punches[0].raw == b"record-000000".hex()


def test_a_cleared_log_is_read_again_and_the_ids_are_unchanged() -> None:
    device, out = FakeDevice(log=[entry(i) for i in range(3)]), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(), out)
    worker.catch_up(FakeClient(device))
    first_ids = [p.event_id for p in out.punches()]
    device.log = [entry(0), entry(1), entry(2)][1:] + [entry(3)]  # oldest dropped, one new
    worker.catch_up(FakeClient(device))
    assert [p.device_time for p in out.punches()][3:] == [BASE + timedelta(seconds=3)]  # only entry 3 is new
    device.log = [entry(9)]  # cleared, then one punch
    worker.catch_up(FakeClient(device))
    assert out.punches()[-1].device_time == BASE + timedelta(seconds=9)
    assert len(set(first_ids)) == 3


def test_bad_records_are_quarantined_and_the_mark_moves_past_them() -> None:
    bad = BadEntry(1, b"\xde\xad", Reason.BAD_TIMESTAMP, "day out of range")
    device, out = FakeDevice(log=[entry(0), bad, entry(2)]), FakeOutput()
    DeviceWorker(DEVICE, fast_settings(), out).catch_up(FakeClient(device))
    dlq = [decode(QuarantineRecord, v) for t, _k, v in out.records if t == "attendance.dlq"]
    assert [(q.reason, q.original(), q.device_serial, q.stage.value) for q in dlq] == [
        (Reason.BAD_TIMESTAMP, b"\xde\xad", SERIAL, "pull")
    ]
    assert len(out.punches()) == 2 and out.marks[mark_key(SERIAL)].startswith("3:")


def test_live_punches_flow_and_the_next_catch_up_skips_them() -> None:
    device, out = FakeDevice(log=[entry(0)]), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(catchup_interval_s=0.3), out,
                          client_factory=lambda d, t: FakeClient(device))
    thread = start(worker)
    wait_for(lambda: worker.status.state == LinkState.LIVE)
    device.log.append(entry(1))
    device.live.put(entry(1))
    wait_for(lambda: len(out.punches()) == 2)
    assert out.punches()[1].source == PunchSource.PULL_LIVE
    assert out.punches()[1].clock_offset_s == -42.5
    wait_for(lambda: device.connects >= 3)  # two more cycles, each with a catch-up
    worker.stop()
    thread.join(5)
    assert [p.device_time for p in out.punches()] == [BASE, BASE + timedelta(seconds=1)]  # no re-send
    assert out.statuses()[-1].state == LinkState.STOPPED


def test_a_live_capture_that_dies_is_a_failure_and_the_catch_up_recovers_the_gap() -> None:
    device, out = FakeDevice(log=[entry(0)]), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(), out, client_factory=lambda d, t: FakeClient(device))
    thread = start(worker)
    wait_for(lambda: worker.status.state == LinkState.LIVE)
    device.log += [entry(1), entry(2)]  # punched, but live capture dies before delivering them
    device.live.put(DeviceError("tcp://fake:4370: live capture failed: UnboundLocalError"))
    wait_for(lambda: len(out.punches()) == 3)
    worker.stop()
    thread.join(5)
    assert worker.health.failures == 0  # the reconnect and catch-up succeeded
    assert any(s.state == LinkState.BACKOFF and s.last_error for s in out.statuses())


def test_a_device_answering_with_another_serial_produces_nothing() -> None:
    device, out = FakeDevice(log=[entry(0)], serial="SOMEONE-ELSE"), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(), out, client_factory=lambda d, t: FakeClient(device))
    thread = start(worker)
    wait_for(lambda: worker.health.failures >= 2)
    worker.stop()
    thread.join(5)
    assert out.punches() == []
    assert "answers as serial 'SOMEONE-ELSE'" in (worker.health.last_error or "")


def test_failures_back_off_alert_once_and_recover() -> None:
    device, out = FakeDevice(log=[entry(0)], fail_connects=6), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(alert_after_failures=5), out,
                          client_factory=lambda d, t: FakeClient(device))
    thread = start(worker)
    wait_for(lambda: worker.status.state == LinkState.LIVE)
    worker.stop()
    thread.join(5)
    alerts = [s.alert for s in out.statuses() if s.alert]
    assert alerts and alerts[0].startswith("5 consecutive failures")
    assert [s.consecutive_failures for s in out.statuses() if s.state == LinkState.BACKOFF] == [1, 2, 3, 4, 5, 6]
    assert out.statuses()[-1].alert is None and len(out.punches()) == 1


# --- health: the schedule, with explicit times -------------------------------------------------

def test_backoff_doubles_from_5_to_300_seconds() -> None:
    settings, health = PullSettings(), Health()
    delays = []
    for n in range(9):
        health.failed("x", 1000.0 + n, settings)
        delays.append(health.backoff_s(settings))
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_alert_on_the_fifth_failure_only_and_realtime_off_after_a_day() -> None:
    settings, health = PullSettings(), Health()
    triggered = [health.failed("refused", t, settings) for t in (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)]
    assert triggered == [[], [], [], [], ["alert"], []]
    assert health.alert_text() == "6 consecutive failures: refused"
    assert health.failed("refused", 86_399.0, settings) == []
    assert health.failed("refused", 86_400.0, settings) == ["realtime-off"] and not health.realtime
    assert health.succeeded() == ["recovered", "realtime-on"]
    assert (health.failures, health.realtime, health.alert_text(), health.backoff_s(settings)) == (0, True, None, 0.0)


# --- the spool writer: group commits with marks ------------------------------------------------

def test_writer_commits_records_and_marks_together_then_calls_back(tmp_path: Any) -> None:
    spool = Spool(tmp_path / "pull.sqlite3")
    writer = SpoolWriter(spool)
    writer.start()
    durable = threading.Event()
    writer.emit([("attendance.raw", b"A", b"1")], marks={"pull:A": "1:x"})
    writer.emit([("attendance.raw", b"A", b"2")], marks={"pull:A": "2:y"}, on_durable=durable.set)
    assert durable.wait(5)
    writer.stop()
    assert [r.value for r in spool.peek(10)] == [b"1", b"2"] and spool.mark("pull:A") == "2:y"
    spool.close()


def test_health_settings_defaults_match_the_issue() -> None:
    pull = PullSettings()
    assert (pull.backoff_initial_s, pull.backoff_max_s, pull.alert_after_failures, pull.realtime_off_after_s) == (
        5.0, 300.0, 5, 86_400.0)
    with pytest.raises(Exception):
        PullSettings(backoff_initial_s="soon")  # type: ignore[arg-type]  # a typed tree refuses nonsense


def test_a_log_record_whose_bytes_spell_live_is_still_kept_as_hex() -> None:
    odd = LogEntry(0, b"live \xff\xfe" + bytes(33), "1001", BASE, 0, 1)  # uid 0x696c, PIN "ve \\xff..."
    device, out = FakeDevice(log=[odd]), FakeOutput()
    DeviceWorker(DEVICE, fast_settings(), out).catch_up(FakeClient(device))
    assert out.punches()[0].raw == odd.raw.hex()


def test_status_carries_what_the_device_reports_of_itself() -> None:
    device, out = FakeDevice(log=[entry(0)]), FakeOutput()
    worker = DeviceWorker(DEVICE, fast_settings(), out, client_factory=lambda d, t: FakeClient(device))
    thread = start(worker)
    wait_for(lambda: worker.status.state == LinkState.LIVE)
    worker.stop()
    thread.join(5)
    status = out.statuses()[-2]
    assert (status.reported_serial, status.firmware, status.users, status.records_capacity, status.clock_offset_s,
            status.address) == (SERIAL, "Ver 6.60", 7, 100_000, -42.5, "tcp://127.0.0.1:4370")
