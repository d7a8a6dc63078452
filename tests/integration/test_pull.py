"""Pull devices end to end: emulated terminals -> `tapstream pull` -> Kafka -> worker -> both sinks.

The terminals are the project's emulator (emulator.fleet), speaking the binary protocol on
loopback; the producer talks to them through unmodified pyzk. The expected punches are what the
emulator generated (every record it ever put in a log), computed here from the emulator, never
read back from the pipeline; the sinks must hold exactly those, once each, whatever happened
on the way (dropped connections, reboots, a producer killed mid-live or mid-download).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

import psycopg

from emulator.device import DeviceConfig, FaultKind
from emulator.fleet import ThreadedFleet
from infra.employees import publish_employees
from infra.harness import TapstreamProcess
from schemas.codec import decode
from schemas.device_status import DeviceStatus
from schemas.punch import RawPunch, compute_event_id
from tests.integration.pipeline_helpers import (
    Pipeline, clickhouse_counts, consume_all, employees, register_pull_device, wait_for,
)

if TYPE_CHECKING:
    from tests.integration.conftest import PgSchema

CODES = [str(1001 + n) for n in range(20)]  # the emulator's user codes for users=20


def expected_ids(fleet: ThreadedFleet, serials: Iterable[str]) -> set[str]:
    """Event ids of every punch the emulated devices ever recorded."""
    return {
        str(compute_event_id(serial, r.user_code, r.device_time, r.state))
        for serial in serials for r in fleet.generated(serial)
    }


def pg_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return [str(row[0]) for row in conn.execute("SELECT event_id FROM attendance_records")]


def wait_states(pipeline: Pipeline, pull: TapstreamProcess, wanted: dict[str, str], timeout_s: float = 60) -> None:
    def reached() -> bool:
        devices = pipeline.pull_status(pull.pid) or {}
        return all(devices.get(s, {}).get("state") == state for s, state in wanted.items())

    wait_for(reached, timeout_s, f"device states {wanted}", pull)


def wait_rows(dsn: str, expected: set[str], timeout_s: float, *watched: TapstreamProcess) -> None:
    wait_for(lambda: len(set(pg_ids(dsn)) & expected) == len(expected), timeout_s,
             f"{len(expected)} punches in PostgreSQL", *watched)


def punch_all(fleet: ThreadedFleet, serials: Iterable[str], times: int, gap_s: float = 0.05) -> None:
    """Punch on each device in turn; a device that is rebooting records nothing (None), like a real one."""
    for _ in range(times):
        for serial in serials:
            fleet.punch(serial)
        time.sleep(gap_s)


def setup(make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema) -> Pipeline:
    pipeline = make_pipeline(pg_schema.dsn)
    publish_employees(pipeline.bootstrap, pipeline.employees, employees(CODES))
    return pipeline


def test_pull_devices_land_exactly_once_through_drops_reboots_and_a_killed_producer(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    configs = [
        DeviceConfig("PULL-A", users=20, log_size=300),
        DeviceConfig("PULL-B", users=20, log_size=300, comm_key=4242, record_format=16, user_format=28),
        DeviceConfig("PULL-C", users=20, log_size=300, record_format=8, single_session=True,
                     clock_offset_s=-90.0, timezone="Asia/Dhaka"),
    ]
    serials = [c.serial for c in configs]
    with ThreadedFleet(configs) as fleet:
        pipeline = setup(make_pipeline, pg_schema)
        register_pull_device(pg_schema.dsn, "PULL-A", fleet.port("PULL-A"))
        register_pull_device(pg_schema.dsn, "PULL-B", fleet.port("PULL-B"), comm_key=4242, transport="udp")
        register_pull_device(pg_schema.dsn, "PULL-C", fleet.port("PULL-C"), "Asia/Dhaka")
        worker = pipeline.start_worker()
        pull = pipeline.start_pull()
        wait_states(pipeline, pull, {s: "live" for s in serials})

        punch_all(fleet, serials, 10)  # live capture
        fleet.inject("PULL-A", FaultKind.DROP)  # next request of A's producer: connection closed
        fleet.reboot("PULL-B", down_s=6.0)  # longer than a cycle: the next connect finds it down
        punch_all(fleet, serials, 5)
        pull.kill()  # SIGKILL mid-live: whatever was not spooled is still in the device logs
        punch_all(fleet, serials, 5)
        pull = pipeline.start_pull("pull-restarted")
        wait_states(pipeline, pull, {s: "live" for s in serials})
        punch_all(fleet, serials, 5)

        expected = expected_ids(fleet, serials)
        assert 3 * 300 + 2 * 25 < len(expected) <= 3 * (300 + 25)  # B recorded nothing while rebooting
        wait_rows(pg_schema.dsn, expected, 120, worker, pull)
        time.sleep(2 * 4)  # two more catch-up passes: nothing may arrive twice
        status = pipeline.pull_status(pull.pid) or {}
        pull.stop()
        assert worker.stop() == 0

    ids = pg_ids(pg_schema.dsn)
    assert sorted(ids) == sorted(expected)  # every generated punch, nothing else, once
    assert clickhouse_counts(pipeline) == {"final": len(expected), "plain": len(expected), "distinct_ids": len(expected)}
    with psycopg.connect(pg_schema.dsn) as conn:
        sources = dict(conn.execute("SELECT source, count(*) FROM attendance_records GROUP BY source").fetchall())
        dhaka = conn.execute(
            "SELECT device_time, punch_time AT TIME ZONE 'UTC' FROM attendance_records WHERE device_serial = 'PULL-C' LIMIT 1"
        ).fetchone()
    assert sources.get("pull-live", 0) > 0 and sources.get("pull-poll", 0) >= 900  # live, and the logs
    assert dhaka is not None and dhaka[0] - dhaka[1] == timedelta(hours=6)  # the registry's zone
    assert abs(status["PULL-C"]["clock_offset_s"] + 90.0) < 3.0  # the device clock is 90 s slow
    raw = [decode(RawPunch, m.value()) for m in consume_all(pipeline.bootstrap, pipeline.raw, 1, linger_s=3)]
    offsets = {p.clock_offset_s is not None and abs(p.clock_offset_s + 90.0) < 3.0 for p in raw if p.device_serial == "PULL-C"}
    assert offsets == {True}  # every PULL-C punch carries the offset measured when it was read
    statuses = [decode(DeviceStatus, m.value()) for m in consume_all(pipeline.bootstrap, pipeline.device_status, 10, linger_s=2)]
    assert {s.device_serial for s in statuses} == set(serials)
    assert any(s.state == "backoff" and s.device_serial == "PULL-B" for s in statuses)  # the reboot was seen


def test_killing_the_producer_mid_download_loses_and_doubles_nothing(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    config = DeviceConfig("PULL-BIG", users=20, log_size=20_000)
    with ThreadedFleet([config]) as fleet:
        pipeline = setup(make_pipeline, pg_schema)
        register_pull_device(pg_schema.dsn, "PULL-BIG", fleet.port("PULL-BIG"))
        # The third chunk of the first download hangs: the producer is mid-download when killed.
        fleet.inject("PULL-BIG", FaultKind.STALL, on_command=1504, skip=2, duration_s=60)
        worker = pipeline.start_worker()
        pull = pipeline.start_pull()
        wait_for(lambda: fleet.stats()["PULL-BIG"]["faults_fired"] >= 1, 60, "the download to hang", pull)
        pull.kill()
        punch_all(fleet, ["PULL-BIG"], 10)
        pull = pipeline.start_pull("pull-restarted")
        wait_states(pipeline, pull, {"PULL-BIG": "live"}, timeout_s=90)
        punch_all(fleet, ["PULL-BIG"], 10)
        expected = expected_ids(fleet, ["PULL-BIG"])
        wait_rows(pg_schema.dsn, expected, 180, worker, pull)
        pull.stop()
        assert worker.stop() == 0
    assert sorted(pg_ids(pg_schema.dsn)) == sorted(expected)
    assert clickhouse_counts(pipeline)["final"] == len(expected) == 20_020


def test_a_misbehaving_device_is_retried_while_the_others_carry_on(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    # PULL-BAD's log and users fit in one packet (pyzk reads them inline): a wrong length shows.
    configs = [DeviceConfig("PULL-BAD", users=10, log_size=20), DeviceConfig("PULL-OK", users=20, log_size=50)]
    # (fault, the request whose reply it spoils): each one kills a different step of a cycle.
    faults = [
        (FaultKind.GARBAGE, 1000),  # connect answered with random bytes
        (FaultKind.TRUNCATE, 11),  # half an answer to "~SerialNumber", then the connection closes
        (FaultKind.WRONG_LENGTH, 1503),  # the log download claims more bytes than it sends
        (FaultKind.STALL, 201),  # the clock read hangs past the producer's timeout
        (FaultKind.GARBAGE_LIVE, None),  # a live event pyzk cannot parse: its generator dies
        (FaultKind.SILENT_LIVE, None),  # live events silently stop: only catch-up collects them
    ]
    with ThreadedFleet(configs) as fleet:
        pipeline = setup(make_pipeline, pg_schema)
        for config in configs:
            register_pull_device(pg_schema.dsn, config.serial, fleet.port(config.serial))
        worker = pipeline.start_worker()
        pull = pipeline.start_pull()
        wait_states(pipeline, pull, {"PULL-BAD": "live", "PULL-OK": "live"})
        for fault, command in faults:
            before = fleet.stats()["PULL-BAD"]["faults_fired"]
            fleet.inject("PULL-BAD", fault, on_command=command, duration_s=8.0)

            def fired() -> bool:
                if command is None:
                    fleet.punch("PULL-BAD")  # live faults act on the next event sent live
                return bool(fleet.stats()["PULL-BAD"]["faults_fired"] > before)

            wait_for(fired, 30, f"{fault} to fire", pull, interval_s=0.5)
            # Meanwhile the healthy device's punches keep arriving, within seconds.
            fleet.punch("PULL-OK")
            wait_rows(pg_schema.dsn, expected_ids(fleet, ["PULL-OK"]), 30, worker, pull)
        punch_all(fleet, ["PULL-BAD", "PULL-OK"], 5)
        expected = expected_ids(fleet, ["PULL-BAD", "PULL-OK"])
        wait_rows(pg_schema.dsn, expected, 90, worker, pull)
        wait_states(pipeline, pull, {"PULL-BAD": "live", "PULL-OK": "live"}, timeout_s=30)
        status = (pipeline.pull_status(pull.pid) or {})["PULL-BAD"]
        assert pull.alive()
        pull.stop()
        assert worker.stop() == 0
    assert sorted(pg_ids(pg_schema.dsn)) == sorted(expected)
    assert status["consecutive_failures"] == 0 and status["alert"] is None  # recovered
    failures = [line for line in pull.log.read_text().splitlines() if "device PULL-BAD:" in line and "(failure" in line]
    assert len(failures) >= 5, failures  # every fault but the silent one ended a cycle, logged
    assert "device PULL-OK: " not in pull.log.read_text().replace("device PULL-OK: caught up", "")


def test_registry_changes_are_followed_without_a_restart(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    configs = [DeviceConfig("PULL-X", users=20, log_size=5), DeviceConfig("PULL-Y", users=20, log_size=5)]
    with ThreadedFleet(configs) as fleet:
        pipeline = setup(make_pipeline, pg_schema)
        register_pull_device(pg_schema.dsn, "PULL-X", fleet.port("PULL-X"))
        worker = pipeline.start_worker()
        pull = pipeline.start_pull()
        wait_states(pipeline, pull, {"PULL-X": "live"})
        started = time.monotonic()
        register_pull_device(pg_schema.dsn, "PULL-Y", fleet.port("PULL-Y"))  # added while running
        wait_states(pipeline, pull, {"PULL-Y": "live"}, timeout_s=60)
        assert time.monotonic() - started < 60
        tapstream_devices(pipeline, "disable", "PULL-Y")
        wait_for(lambda: "PULL-Y" not in (pipeline.pull_status(pull.pid) or {}), 60, "PULL-Y to stop", pull)
        fleet.punch("PULL-Y")  # while disabled: stays in the device log
        tapstream_devices(pipeline, "enable", "PULL-Y")
        wait_states(pipeline, pull, {"PULL-Y": "live"}, timeout_s=60)
        expected = expected_ids(fleet, ["PULL-X", "PULL-Y"])
        wait_rows(pg_schema.dsn, expected, 60, worker, pull)
        tapstream_devices(pipeline, "remove", "PULL-X")
        wait_for(lambda: "PULL-X" not in (pipeline.pull_status(pull.pid) or {}), 60, "PULL-X to stop", pull)
        pull.stop()
        worker.stop()
    assert sorted(pg_ids(pg_schema.dsn)) == sorted(expected)


def test_backfill_republishes_a_log_and_changes_nothing_downstream(
    make_pipeline: Callable[..., Pipeline], pg_schema: PgSchema
) -> None:
    with ThreadedFleet([DeviceConfig("PULL-BF", users=20, log_size=400)]) as fleet:
        pipeline = setup(make_pipeline, pg_schema)
        register_pull_device(pg_schema.dsn, "PULL-BF", fleet.port("PULL-BF"))
        worker = pipeline.start_worker()
        records = fleet.records("PULL-BF")
        since = records[300].device_time
        selected = sum(1 for r in records if r.device_time >= since)
        done = pipeline.run("backfill", "--device", "PULL-BF", "--since", since.isoformat())
        assert done.returncode == 0, done.stderr
        assert f"400 records in the log, {selected} selected, {selected} published" in done.stdout
        expected = {str(compute_event_id("PULL-BF", r.user_code, r.device_time, r.state)) for r in records[300:]}
        wait_rows(pg_schema.dsn, expected, 60, worker)
        again = pipeline.run("backfill", "--device", "PULL-BF")  # the whole log, twice over part of it
        assert again.returncode == 0, again.stderr
        everything = expected_ids(fleet, ["PULL-BF"])
        wait_rows(pg_schema.dsn, everything, 60, worker)
        assert len(consume_all(pipeline.bootstrap, pipeline.raw, selected + 400, linger_s=2)) == selected + 400
        assert worker.stop() == 0
    assert sorted(pg_ids(pg_schema.dsn)) == sorted(everything)
    missing = pipeline.run("backfill", "--device", "NOPE")
    assert missing.returncode == 1 and "device NOPE is not registered" in missing.stderr


def tapstream_devices(pipeline: Pipeline, *args: str) -> None:
    done = pipeline.run("devices", *args)
    assert done.returncode == 0, done.stderr
