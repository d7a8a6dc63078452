"""The pure parts of `tapstream bench pipeline`: workload, arithmetic, result line, run names."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from infra.bench_run import BenchOptions, plan_run
from infra.bench_env import client_versions, machine, profile_summary
from infra.bench_events import (
    NO_MIX, RESULT_KEYS, Expected, Message, Mix, Workload, bench_devices, bench_employees, bench_workload,
    counts_match, encoded_messages, generate_punches, rate, result_line, time_breakdown, unknown_badges,
    worker_counts, worker_rate, worker_span,
)
from infra.bench_profile import threads_path
from infra.topics import topic_specs
from schemas.codec import decode
from schemas.punch import RawPunch
from streams.logic import Incoming, implausible, plan_batch, to_remember
from tapstream.settings import Settings, TopicSettings, ValidationSettings


def punches(events: int, devices: int = 4, employees: int = 50, seed: int = 7) -> list[RawPunch]:
    codes = [e.attendance_code for e in bench_employees(employees)]
    return list(generate_punches(events, bench_devices(devices), codes, seed=seed))


def test_the_workload_is_deterministic_for_a_seed() -> None:
    assert punches(300) == punches(300)
    assert punches(300, seed=8) != punches(300)


def test_every_event_id_is_distinct_even_with_few_devices_and_badges() -> None:
    generated = punches(5000, devices=2, employees=3)
    assert len({p.event_id for p in generated}) == 5000


def test_punches_go_round_robin_over_devices_with_rising_clocks() -> None:
    generated = punches(40, devices=4)
    assert [p.device_serial for p in generated[:5]] == ["BENCH-0001", "BENCH-0002", "BENCH-0003", "BENCH-0004", "BENCH-0001"]
    first = [p for p in generated if p.device_serial == "BENCH-0001"]
    assert all(b.device_time > a.device_time for a, b in zip(first, first[1:]))


def test_punches_are_valid_contract_events_from_known_badges() -> None:
    employees = {e.attendance_code for e in bench_employees(50)}
    for key, value in encoded_messages(iter(punches(100))):
        punch = decode(RawPunch, value)
        assert key == punch.device_serial.encode()
        assert punch.user_code in employees
        assert punch.raw.startswith(f"{punch.user_code}\t")
        assert timedelta(seconds=1) <= punch.received_at - punch.punch_time <= timedelta(seconds=30)


def test_devices_spread_over_time_zones_and_employees_are_active() -> None:
    assert len({d.timezone for d in bench_devices(6)}) == 6
    staff = bench_employees(3)
    assert [e.attendance_code for e in staff] == ["100000", "100001", "100002"]
    assert all(e.active for e in staff)


def test_a_workload_needs_devices_and_badges() -> None:
    with pytest.raises(ValueError):
        list(generate_punches(1, [], ["100000"]))


def workload(events: int, seed: int = 7, mix: Mix = Mix(), employees: int = 50) -> Workload:
    codes = [e.attendance_code for e in bench_employees(employees)]
    return bench_workload(events, bench_devices(4), codes, mix=mix, seed=seed)


def run_like_the_worker(messages: list[Message], employees: int = 50, batch: int = 1000) -> dict[str, int]:
    """Plan the messages batch by batch as streams.batcher does: the dedup table remembers
    written and parked punches, and one key always lands on one partition."""
    staff = {e.attendance_code: e for e in bench_employees(employees)}
    remembered: set[uuid.UUID] = set()
    offsets: dict[int, int] = {}
    totals = {"records": 0, "duplicates": 0, "unmatched": 0, "quarantined": 0}
    for start in range(0, len(messages), batch):
        incoming = []
        for key, value in messages[start:start + batch]:
            partition = sum(key) % 6
            offsets[partition] = offsets.get(partition, -1) + 1
            incoming.append(Incoming("attendance.raw", partition, offsets[partition], key, value))
        plan = plan_batch(incoming, lambda _msg, event_id: event_id in remembered, staff.get)
        remembered.update(s.event_id for s in to_remember(plan, plan.to_write))
        totals["records"] += len(plan.to_write)
        totals["duplicates"] += plan.duplicates
        totals["unmatched"] += len(plan.unmatched)
        totals["quarantined"] += len(plan.quarantined)
    return totals


def test_the_mixed_workload_is_deterministic_for_a_seed() -> None:
    assert workload(2000) == workload(2000)
    assert workload(2000, seed=8).messages != workload(2000).messages


def test_without_the_mix_the_workload_is_the_plain_punches() -> None:
    plain = encoded_messages(iter(punches(300)))
    assert workload(300, mix=NO_MIX) == Workload(plain, Expected(records=300, duplicates=0, unmatched=0, quarantined=0))


def test_the_mix_has_its_proportions_and_n_stays_the_number_of_messages() -> None:
    load = workload(10_000)
    assert len(load.messages) == 10_000
    assert load.expected == Expected(records=9580, duplicates=300, unmatched=100, quarantined=20)
    badges = [decode(RawPunch, value).user_code for _key, value in load.messages]
    assert sum(code in unknown_badges([]) for code in badges) == 100
    assert decode(RawPunch, load.messages[0][1]).user_code not in unknown_badges([])  # a new punch comes first


def test_expected_records_are_the_distinct_valid_punches_of_known_badges() -> None:
    load, known = workload(10_000), {e.attendance_code for e in bench_employees(50)}
    decoded = [decode(RawPunch, value) for _key, value in load.messages]
    rejected = [p for p in decoded if implausible(p, ValidationSettings()) is not None]
    valid = [p for p in decoded if implausible(p, ValidationSettings()) is None]
    recordable = [p for p in valid if p.user_code in known]
    assert load.expected.records == len({p.event_id for p in recordable})
    assert load.expected.duplicates == len(recordable) - load.expected.records
    assert load.expected.quarantined == len(rejected)
    assert load.expected.unmatched == len(valid) - len(recordable)
    assert {p.device_time.year for p in rejected} == {2000}  # a reset clock, nothing else


def test_the_worker_logic_counts_exactly_what_the_workload_expects() -> None:
    for seed in (7, 8):
        load = workload(10_000, seed=seed)
        assert run_like_the_worker(load.messages) == load.expected.as_dict(), seed


def test_resends_come_after_their_original_on_its_key_half_of_them_byte_identical() -> None:
    load = workload(10_000)
    first: dict[uuid.UUID, tuple[int, Message]] = {}
    identical = changed = 0
    for position, (key, value) in enumerate(load.messages):
        punch = decode(RawPunch, value)
        if punch.event_id not in first:
            first[punch.event_id] = (position, (key, value))
            continue
        earlier, (original_key, original_value) = first[punch.event_id]
        assert earlier < position and key == original_key
        original = decode(RawPunch, original_value)
        identical += value == original_value
        changed += value != original_value and original.model_copy(update={"received_at": punch.received_at}) == punch
    assert (identical, changed) == (150, 150)


def test_a_mix_must_leave_new_punches_and_badges_must_stay_unknown() -> None:
    with pytest.raises(ValueError, match="no new punch"):
        workload(100, mix=Mix(duplicates=0.5, unmatched=0.5, quarantined=0.0))
    with pytest.raises(ValueError, match="unknown badges"):
        unknown_badges(["900000007"])
    assert len(workload(1).messages) == 1


def test_counts_match_only_when_sinks_and_worker_counts_are_all_exact() -> None:
    expected = Expected(records=95, duplicates=3, unmatched=1, quarantined=1)
    counted = worker_counts({"consumed": 100, "duplicates": 3, "unmatched": 1, "quarantined": 1, "rejected": 0})
    assert counts_match(100, expected, counted, 95, 95)
    assert not counts_match(100, expected, counted, 95, 96)
    assert not counts_match(100, expected, counted, 96, 96)
    for key in ("consumed", "duplicates", "unmatched", "quarantined"):
        assert not counts_match(100, expected, {**counted, key: (counted[key] or 0) + 1}, 95, 95), key
    assert not counts_match(100, expected, worker_counts({}), 95, 95)


def test_rate_arithmetic() -> None:
    assert rate(100_000, 40.0) == 2500
    assert rate(10, 3.0) == 3
    assert rate(10, 0.0) is None
    assert rate(10, None) is None


def test_worker_rate_spans_first_event_to_last_flush() -> None:
    stats = {"first_event_at": 1000.0, "last_flush_at": 1040.0, "last_event_at": 1039.0}
    assert worker_span(stats) == 40.0
    assert worker_rate(stats, 100_000) == 2500
    assert worker_rate({"first_event_at": 1000.0}, 10) is None


def test_time_breakdown_sums_the_worker_log_lines() -> None:
    log = "\n".join([
        "[..] [1] [INFO] postgres: wrote batch rows=5000 new=5000 ms=172.2 ",
        "[..] [1] [INFO] clickhouse: wrote batch rows=5000 token=c199b68986ba ms=207.8 ",
        "[..] [1] [INFO] batch of 5000: 5000 written, 0 duplicates, 0 unmatched, 0 quarantined in 829 ms ",
        "[..] [1] [INFO] postgres: wrote batch rows=10 new=10 ms=7.8 ",
        "[..] [1] [INFO] batch of 10: 10 written, 0 duplicates, 0 unmatched, 0 quarantined in 71 ms ",
        "unrelated line",
    ])
    assert time_breakdown(log) == {"flush_s": 0.9, "postgres_write_s": 0.18, "clickhouse_write_s": 0.21}
    assert time_breakdown("") == {"flush_s": 0.0, "postgres_write_s": 0.0, "clickhouse_write_s": 0.0}


def test_the_result_line_has_a_fixed_shape_and_is_one_json_line() -> None:
    line = result_line(events=10, devices=2, worker_events_per_s=5.0, counts_match=True)
    assert tuple(line) == RESULT_KEYS
    assert line["load_events_per_s"] is None
    text = json.dumps(line, default=str)
    assert "\n" not in text
    required = {"events", "devices", "load_events_per_s", "worker_events_per_s", "wall_s", "postgres_rows",
                "clickhouse_rows", "batches", "machine", "versions", "settings"}
    assert required <= set(json.loads(text))


def test_the_result_line_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="typo"):
        result_line(typo=1)


def test_machine_and_versions_describe_this_process() -> None:
    info = machine()
    assert info["cores"] and info["cpu"]
    versions = client_versions()
    assert versions["python"].count(".") == 2
    for name in ("faust-streaming", "aiokafka", "confluent-kafka", "librdkafka", "psycopg", "clickhouse-connect", "chdb"):
        assert versions[name], name


def test_a_run_is_isolated_by_name(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, _env_file=None)
    run = plan_run(settings, BenchOptions(events=10, batch_max=1000), run_id="20260101000000-abc123")
    assert run.settings.topics.raw == "attendance.raw.bench-20260101000000-abc123"
    # every topic Tapstream has (the live feed and alerts included) gets the run's own copy
    assert len(set(run.topic_names())) == len(topic_specs(TopicSettings())) and all(n.endswith("bench-20260101000000-abc123") for n in run.topic_names())
    assert run.settings.worker.app_id == "tapstream-bench-20260101000000-abc123"
    assert run.settings.worker.batch_max == 1000
    assert run.folder == tmp_path / "bench" / "20260101000000-abc123"
    assert run.schema == "bench_20260101000000_abc123"
    assert "search_path=bench_20260101000000_abc123" in run.dsn
    assert settings.topics.raw == "attendance.raw"  # the caller's tree is left alone


def test_the_worker_environment_points_at_the_run_only(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, _env_file=None)
    run = plan_run(settings, BenchOptions(events=10), run_id="r1")
    env = run.worker_env({"PATH": "/bin", "TAPSTREAM_TOPICS__RAW": "attendance.raw"})
    assert env["PATH"] == "/bin"
    assert env["TAPSTREAM_TOPICS__RAW"] == "attendance.raw.bench-r1"
    assert env["TAPSTREAM_STATE_DIR"] == str(tmp_path / "bench" / "r1")
    assert env["TAPSTREAM_WORKER__BATCH_MAX"] == str(settings.worker.batch_max)
    assert "search_path=bench_r1" in env["TAPSTREAM_POSTGRES__DSN"]
    assert env["TAPSTREAM_CLICKHOUSE__DATABASE"].endswith("_bench_r1")


def test_profile_summary_reads_main_and_thread_profiles(tmp_path: Path) -> None:
    import cProfile

    out = tmp_path / "worker.prof"
    profile = cProfile.Profile()
    profile.runcall(sorted, range(1000))
    profile.dump_stats(str(out))
    assert threads_path(out) == tmp_path / "worker.threads.prof"
    text = profile_summary([out, threads_path(out)], top=5)  # the missing threads file is skipped
    assert "worker.prof: top 5 by cumulative" in text and "worker.prof: top 5 by tottime" in text
    assert "threads.prof" not in text
