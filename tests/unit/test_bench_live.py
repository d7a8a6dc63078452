"""The pure parts of `tapstream bench live`: tap schedule, uploads, SSE parsing, figures, run names."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from infra.bench_live_plan import (
    RESULT_KEYS, STAGES, LiveOptions, Tap, check_plan, device_serials, histogram, merge, percentiles, result_line,
    slow_summary, sse_counters, stage_latencies, tap_schedule, throughput_ratio, uploads,
)
from infra.bench_live_run import _share, plan_live_run
from infra.bench_live_sse import PUNCH_MARK, Plan, Tally, _event_id, count_marks, last_event_id, tally_connections
from monitor.sse_reader import SseEvent, SseParser
from producers.adms import parse_attlog
from schemas.punch import compute_event_id
from tapstream.settings import Settings

START = 1_790_000_000.0  # an epoch second: 2026-09-21 14:13:20 UTC
CODES = [str(100_000 + i) for i in range(1000)]


def schedule(**overrides: float) -> tuple[LiveOptions, list[Tap]]:
    options = LiveOptions(**{"rate": 500.0, "duration_s": 4.0, "devices": 20, **overrides})  # type: ignore[arg-type]  # test shorthand
    return options, tap_schedule(options, START, CODES)


def test_taps_are_evenly_spaced_round_robin_with_distinct_event_ids() -> None:
    options, taps = schedule()
    assert len(taps) == 2000
    assert taps[1].at - taps[0].at == pytest.approx(1 / 500, abs=1e-6)
    assert taps[-1].at < START + 4.0
    assert [t.serial for t in taps[:3]] == device_serials(3)
    assert taps[20].serial == taps[0].serial
    assert len({t.event_id for t in taps}) == len(taps)


def test_a_taps_event_id_is_what_the_push_endpoint_computes_from_its_line() -> None:
    _, taps = schedule(duration_s=0.1)
    tap = taps[7]
    parsed = parse_attlog((tap.attlog_line() + "\n").encode(), device_serial=tap.serial, device_tz="UTC",
                          received_at=datetime.fromtimestamp(tap.at, UTC))
    assert len(parsed.punches) == 1
    assert str(parsed.punches[0].event_id) == tap.event_id
    assert tap.event_id == str(compute_event_id(tap.serial, tap.code, tap.device_time, tap.state))
    assert tap.device_time == datetime.fromtimestamp(int(tap.at), UTC).replace(tzinfo=None)


def test_plans_that_would_repeat_an_event_id_are_refused() -> None:
    check_plan(LiveOptions(rate=500, devices=20, employees=1000))
    with pytest.raises(ValueError, match="repeat within a second"):
        check_plan(LiveOptions(rate=500, devices=1, employees=600))
    with pytest.raises(ValueError):
        check_plan(LiveOptions(rate=0))
    with pytest.raises(ValueError, match="upload interval"):
        check_plan(LiveOptions(upload_interval_s=0))


def test_each_upload_carries_the_taps_of_its_devices_last_interval() -> None:
    options, taps = schedule(upload_interval_s=0.15)
    plan = uploads(taps, options, START)
    assert sorted(t.event_id for u in plan for t in u.taps) == sorted(t.event_id for t in taps)
    assert [u.at for u in plan] == sorted(u.at for u in plan)
    for upload in plan:
        assert {t.serial for t in upload.taps} == {upload.serial}
        assert all(upload.at - 0.15 <= t.at < upload.at for t in upload.taps)
    # 25 taps/s a device, 0.15 s apart: 3-4 taps an upload, never more than the interval holds
    assert max(len(u.taps) for u in plan) <= 4
    first = {u.serial: u.at for u in reversed(plan)}
    assert len(set(first.values())) == options.devices  # phases spread the devices' requests


def test_an_upload_body_is_one_attlog_line_per_tap() -> None:
    options, taps = schedule(duration_s=0.5)
    upload = uploads(taps, options, START)[0]
    lines = upload.body().decode().splitlines()
    assert lines == [t.attlog_line() for t in upload.taps]
    assert lines[0].split("\t")[0] == upload.taps[0].code


def test_the_sse_parser_gives_whole_events_whatever_the_chunking() -> None:
    stream = (b": keepalive\n\nevent: punch\nid: 41\ndata: {\"event_id\": \"a\"}\n\n"
              b"event: behind\r\nid: 42\r\ndata: {\"message\": \"x\",\r\ndata: \"last_event_id\": \"41\"}\r\n\r\n")
    whole = SseParser().feed(stream)
    assert whole == [SseEvent("punch", "41", '{"event_id": "a"}'),
                     SseEvent("behind", "42", '{"message": "x",\n"last_event_id": "41"}')]
    for size in (1, 2, 3, 7, 50):
        parser = SseParser()
        got = [e for i in range(0, len(stream), size) for e in parser.feed(stream[i:i + size])]
        assert got == whole, size


def test_an_unfinished_event_waits_for_its_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b"event: punch\ndata: {}\n") == []
    assert parser.feed(b"\n") == [SseEvent("punch", None, "{}")]


def test_the_event_id_is_found_without_parsing_the_whole_object() -> None:
    assert _event_id('{"device_serial": "X", "event_id": "5b1c-9", "user_code": "7"}') == "5b1c-9"
    assert _event_id('{"event_id":"abc"}') == "abc"
    assert _event_id('{"other": 1}') == ""


def test_a_client_tally_counts_firsts_repeats_and_foreign_punches() -> None:
    plan = Plan(2)
    plan.load([("a", 100.0), ("b", 100.5)], deadline=200.0)
    tally = Tally(len(plan))
    plan.record(tally, '{"event_id": "a"}', 100.120)
    plan.record(tally, '{"event_id": "a"}', 100.900)
    plan.record(tally, '{"event_id": "warm-up"}', 101.0)
    assert not tally.complete
    plan.record(tally, '{"event_id": "b"}', 100.75)
    assert tally.complete
    assert tally.summary() == {"received": 2, "missing": 0, "duplicates": 1, "other": 1, "behind": 0,
                               "reconnects": 0}
    assert tally.hist == Counter({120: 1, 250: 1})


def frames(*events: tuple[str, str, str]) -> bytes:
    return "".join(f"id: {i}\nevent: {kind}\ndata: {data}\n\n" for i, kind, data in events).encode()


def test_raw_chunks_are_tallied_after_the_load_each_punch_at_its_chunks_arrival() -> None:
    plan = Plan(3)
    plan.load([("a", 100.0), ("b", 100.1), ("c", 100.2)], deadline=200.0)
    first = frames(("l1.s0.a0", "punch", '{"event_id": "a"}'), ("l2.s0.a0", "punch", '{"event_id": "b"}'),
                   ("l2.s0.a0", "behind", "{}"))
    second = frames(("l3.s0.a0", "punch", '{"event_id": "c"}'))
    tally = Tally(len(plan))
    # the first connection arrives in three chunks cut mid-event; the second after a reconnect
    tally.connections = [[(100.05, first[:30]), (100.3, first[30:70]), (100.4, first[70:])], [(101.0, second)]]
    assert last_event_id(tally.connections[0]) == "l2.s0.a0"  # where the reconnect resumes
    tally_connections(plan, tally)
    assert tally.complete and tally.behind == 1 and tally.connections == []
    # "a" (tapped at 100.0) ends in the chunk read at 100.3, "b" (100.1) in the one read at 100.4,
    # "c" (100.2) at 101.0: each counts from the chunk that completed it (whole ms, rounded down)
    assert first.index(b'"a"}\n\n') + 6 <= 70 < first.index(b'"b"}\n\n') + 6
    got = sorted(tally.hist.elements())
    assert all(abs(ms - want) <= 1 for ms, want in zip(got, [300, 300, 800], strict=True)), got


def test_punch_marks_split_across_chunks_count_once() -> None:
    data = frames(*[(f"l{n}.s0.a0", "punch", "{}") for n in range(5)], ("x", "device", "{}"))
    for size in (1, 3, 7, 13, 14, 15, 64, len(data)):
        tail, total = b"", 0
        for start in range(0, len(data), size):
            found, tail = count_marks(PUNCH_MARK, tail, data[start:start + size])
            total += found
        assert total == 5, size


def test_percentiles_of_a_histogram() -> None:
    hist = histogram([float(x) for x in range(1, 101)])  # 1 ... 100 ms
    assert percentiles(hist) == {"count": 100, "p50": 50, "p95": 95, "p99": 99, "max": 100}
    assert percentiles(Counter()) == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    skewed = Counter({10: 990, 400: 10})
    assert percentiles(skewed)["p99"] == 10 and percentiles(skewed)["max"] == 400
    assert percentiles(Counter({10: 989, 400: 11}))["p99"] == 400


def test_histograms_merge_across_processes_with_json_keys() -> None:
    assert merge([{"5": 2, "7": 1}, Counter({5: 1})]) == Counter({5: 3, 7: 1})
    assert histogram([0.4, 0.9, 1.0, 249.99]) == Counter({0: 2, 1: 1, 249: 1})


def test_throughput_ratio() -> None:
    assert throughput_ratio(2000, 1960) == 0.98
    assert throughput_ratio(None, 1960) is None
    assert throughput_ratio(2000, None) is None


def test_the_result_line_has_exactly_its_keys() -> None:
    line = result_line(bench="live", punches=30000)
    assert list(line) == list(RESULT_KEYS)
    assert line["punches"] == 30000 and line["rate_achieved"] is None
    with pytest.raises(ValueError, match="not result fields"):
        result_line(latency=1)


def test_a_live_run_isolates_the_live_and_alert_topics_too() -> None:
    settings = Settings()
    run = plan_live_run(settings, LiveOptions(batch_within_s=0.05, fetch_max_wait_ms=1500), run_id="r1")
    t = run.settings.topics
    assert t.live == "attendance.live.bench-r1" and t.alerts == "alerts.bench-r1"
    assert t.raw == "attendance.raw.bench-r1"
    assert {t.live, t.alerts, t.raw} <= set(run.topic_names())
    env = run.worker_env({})
    assert env["TAPSTREAM_TOPICS__LIVE"] == t.live and env["TAPSTREAM_TOPICS__ALERTS"] == t.alerts
    assert env["TAPSTREAM_WORKER__BATCH_WITHIN_S"] == "0.05"
    assert env["TAPSTREAM_WORKER__FETCH_MAX_WAIT_MS"] == "1500"  # Faust's own, to compare against
    assert env["TAPSTREAM_METRICS__WORKER_PORT"] == "0"
    assert env["TAPSTREAM_MONITOR__PORT"] == str(run.monitor_port) != "0"
    assert settings.topics.live == "attendance.live"  # the caller's settings are untouched


def test_clients_are_shared_evenly_among_processes() -> None:
    assert [_share(100, 3, i) for i in range(3)] == [34, 33, 33]
    assert sum(_share(7, 2, i) for i in range(2)) == 7


def test_a_probe_client_splits_each_latency_into_stages() -> None:
    plan = Plan(1)
    plan.load([("a", 100.0)], deadline=200.0)
    tally = Tally(1, probe=True)
    received, recorded = datetime.fromtimestamp(100.2, UTC), datetime.fromtimestamp(100.5, UTC)
    data = json.dumps({"event_id": "a", "received_at": received.isoformat(), "recorded_at": recorded.isoformat()})
    plan.record(tally, data, 100.6)
    plan.record(tally, data, 101.0)  # a repeat is not measured again
    measured = {name: list(h.elements()) for name, h in tally.stages.items()}
    assert [len(v) for v in measured.values()] == [1, 1, 1]
    for name, ms in {"tap_to_received": 200, "received_to_recorded": 300, "recorded_to_sse": 100}.items():
        assert abs(measured[name][0] - ms) <= 1, name  # whole ms, rounded down from float sums


def test_stage_latencies_add_up_to_the_whole() -> None:
    punch = {"received_at": "2026-12-04T10:00:00.150000+00:00", "recorded_at": "2026-12-04T10:00:00.400000+00:00"}
    tap = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC).timestamp()
    stages = stage_latencies(punch, tap, tap + 0.5)
    assert stages == pytest.approx({"tap_to_received": 150, "received_to_recorded": 250, "recorded_to_sse": 100})
    assert list(stages) == list(STAGES)


def test_slow_readers_are_summed_over_processes() -> None:
    results = [{"slow": [{"bytes": 10, "behind": 1, "reconnects": 2}, {"bytes": 5, "behind": 0, "reconnects": 0}]},
               {"slow": [{"bytes": 1, "behind": 0, "reconnects": 1}]}, {}]
    assert slow_summary(results) == {"clients": 3, "cut_off": 2, "behind_notices": 1, "reconnects": 3, "bytes": 16}


def test_the_monitors_sse_counters_are_read_from_its_metrics_text() -> None:
    text = ("# HELP tapstream_sse_clients SSE clients connected to /events\n# TYPE tapstream_sse_clients gauge\n"
            "tapstream_sse_clients 1.0\ntapstream_sse_clients_behind_total 3.0\n"
            "tapstream_sse_clients_behind_created 1.7e9\ntapstream_monitor_events_in_total{topic=\"live\"} 5.0\n")
    assert sse_counters(text) == {"clients": 1.0, "clients_behind_total": 3.0, "clients_behind_created": 1.7e9}
