"""The pure parts of `tapstream replay` and `tapstream checksums`: times, offset ranges, which
group offsets may move, the replay's own duplicate rule, and what goes into a checksum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from infra.checksums import checksum_columns, digest
from infra.replay import (
    Move, PartitionRange, ReplayDedup, ReplaySummary, live_would_drop, offsets_to_move, parse_moment, plan_ranges,
    refusal,
)
from infra.replay import _lookup as employee_lookup  # the replay's map rule, private on purpose
from schemas.codec import encode
from schemas.employee import EmployeeRecord
from schemas.punch import RawPunch
from streams.delivery import DeliveryOutcome
from streams.logic import Incoming, plan_batch, to_remember
from tests.factories import enriched

HOUR_MS = 3600 * 1000


def test_times_are_utc_naive_ones_included_and_earliest_is_none() -> None:
    assert parse_moment("earliest") is None and parse_moment(" EARLIEST ") is None
    assert parse_moment("2026-11-01T06:00") == datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    assert parse_moment("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_moment("2026-11-01T06:00Z") == datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    dhaka = parse_moment("2026-11-01T12:00+06:00")
    assert dhaka == datetime(2026, 11, 1, 6, 0, tzinfo=UTC) and dhaka.tzinfo == UTC
    assert parse_moment("2026-11-01T06:00-05:30") == datetime(2026, 11, 1, 11, 30, tzinfo=timezone(timedelta(0)))
    for bad in ("yesterday", "", "01/11/2026", "2026-13-01"):
        with pytest.raises(ValueError):
            parse_moment(bad)


WATERMARKS = {0: (0, 100), 1: (40, 90), 2: (0, 0)}


def test_earliest_to_the_end_covers_what_each_partition_still_holds() -> None:
    assert plan_ranges(WATERMARKS, None, None) == [
        PartitionRange(0, 0, 0, 100), PartitionRange(1, 40, 40, 90), PartitionRange(2, 0, 0, 0),
    ]


def test_a_time_with_no_message_at_or_after_it_leaves_nothing_to_replay() -> None:
    ranges = plan_ranges(WATERMARKS, {0: 60, 1: -1, 2: -1}, None)
    assert [(r.start, r.stop, r.count) for r in ranges] == [(60, 100, 40), (90, 90, 0), (0, 0, 0)]


def test_to_stops_before_its_offset_and_never_past_the_snapshot_end() -> None:
    # Offsets found for --to: 80 in partition 0; none at or after it in 1 (all of it is older).
    ranges = plan_ranges(WATERMARKS, {0: 10, 1: 50, 2: -1}, {0: 80, 1: -1, 2: -1})
    assert [(r.start, r.stop) for r in ranges] == [(10, 80), (50, 90), (0, 0)]
    # A --to before --from (or offsets that moved meanwhile) gives an empty range, not a negative one.
    assert plan_ranges({0: (0, 100)}, {0: 70}, {0: 20}) == [PartitionRange(0, 0, 70, 70)]
    # Offsets outside the snapshot (retention ran, or messages arrived since) are clamped to it.
    assert plan_ranges({0: (40, 100)}, {0: 5}, {0: 500}) == [PartitionRange(0, 40, 40, 100)]


def test_offsets_move_only_forward_after_a_complete_replay_that_covered_them() -> None:
    ranges = [PartitionRange(0, 0, 0, 100), PartitionRange(1, 0, 0, 90), PartitionRange(2, 0, 0, 50)]
    committed: dict[int, int | None] = {0: 30, 1: 90, 2: None}
    assert offsets_to_move(ranges, committed, complete=True) == [Move(0, 30, 100), Move(2, None, 50)]
    # never backwards, never past what was read: a group already at (or beyond) the end stays
    assert offsets_to_move([PartitionRange(0, 0, 0, 100)], {0: 120}, complete=True) == []
    # one sink rebuilt, or a --to: the worker still has to write the range to the other sink
    assert offsets_to_move(ranges, committed, complete=False) == []


def test_offsets_do_not_move_over_messages_the_replay_did_not_read() -> None:
    ranges = [PartitionRange(0, 0, 50, 100), PartitionRange(1, 0, 50, 100), PartitionRange(2, 10, 50, 100)]
    # the group is behind the replay's start: [30, 50) was never written by anyone
    assert offsets_to_move(ranges, {0: 30, 1: 60, 2: None}, complete=True) == [Move(1, 60, 100)]
    # a committed offset deleted by retention resumes at the earliest kept one
    assert offsets_to_move([PartitionRange(0, 10, 10, 40)], {0: 3}, complete=True) == [Move(0, 3, 40)]


def test_the_live_dedup_window_is_the_current_or_previous_tumbling_window() -> None:
    window = 6 * HOUR_MS
    assert live_would_drop(0, 0, window) and live_would_drop(5 * HOUR_MS, 6 * HOUR_MS, window)
    assert live_would_drop(0, 11 * HOUR_MS, window)  # previous window
    assert not live_would_drop(0, 12 * HOUR_MS, window)  # expired
    assert live_would_drop(10 * HOUR_MS, 2 * HOUR_MS, window)  # written earlier in processing order


CODES = {"1001": EmployeeRecord(attendance_code="1001", employee_id="E-1")}


def resend(n: int, hours_later: float) -> RawPunch:
    """The n-th punch as a device re-sends it: same event id, received later."""
    first = enriched(n).punch
    return enriched(n, received_at=first.received_at + timedelta(hours=hours_later)).punch


def test_the_replay_drops_what_it_wrote_itself_within_the_window_and_nothing_else() -> None:
    dedup = ReplayDedup(window_s=6 * 3600)
    start_ms = 1_800_000_000_000 - 1_800_000_000_000 % (6 * HOUR_MS)  # the start of a window
    punches = [(enriched(0).punch, 0), (enriched(1).punch, 0), (resend(0, 1), 1), (resend(1, 13), 13)]
    batch = [Incoming("attendance.raw", 0, offset, b"SN", encode(p)) for offset, (p, _) in enumerate(punches)]
    written = []
    for msg, (_, hours) in zip(batch, punches, strict=True):  # one message per batch: across batches
        dedup.begin({(0, msg.offset): start_ms + hours * HOUR_MS})
        plan = plan_batch([msg], dedup.already_seen, CODES.get)
        dedup.remember(to_remember(plan, plan.to_write))  # no sink rejected anything
        written += [(r.source_offset, r.punch.received_at) for r in plan.to_write]
    # the re-send an hour later is what the live worker dropped; 13 hours later it passed again
    assert [offset for offset, _ in written] == [0, 1, 3]
    assert written[0][1] == punches[0][0].received_at  # the first copy is the one kept


def test_the_replay_drops_a_resent_parked_punch_but_not_the_rematchers_resend() -> None:
    dedup = ReplayDedup(window_s=3600)
    value = encode(enriched(0, user_code="9999").punch)  # a code the map does not know
    outcome = []
    for offset, rematch in [(0, False), (1, False), (2, True)]:  # original, device re-send, rematch
        msg = Incoming("attendance.raw", 0, offset, b"SN", value, rematch=rematch)
        dedup.begin({(0, offset): offset * 1000})
        plan = plan_batch([msg], dedup.already_seen, CODES.get)
        dedup.remember(to_remember(plan, plan.to_write))
        outcome.append((len(plan.unmatched), plan.duplicates))
    assert outcome == [(1, 0), (0, 1), (1, 0)]


def test_the_worker_group_must_be_empty() -> None:
    assert refusal("tapstream-worker", []) is None
    message = refusal("tapstream-worker", ["10.0.0.5", "10.0.0.7", "10.0.0.5"])
    assert message is not None and "\n" not in message
    assert "'tapstream-worker' has 3 active member(s) (10.0.0.5, 10.0.0.7)" in message
    assert "stop `tapstream worker` first" in message


def test_the_summary_accounts_for_every_message_and_every_sink() -> None:
    batch = [Incoming("attendance.raw", 0, n, b"SN", encode(enriched(n, user_code=c).punch))
             for n, c in enumerate(["1001", "1001", "9999"])]
    plan = plan_batch([*batch, batch[0], Incoming("attendance.raw", 0, 9, None, b"{")], lambda *_: False, CODES.get)
    summary = ReplaySummary(written=len(plan.to_write), moved=[Move(0, None, 5)])
    summary.stats.note_batch(plan, [DeliveryOutcome(written=2, inserted=1, attempts=1),
                                    DeliveryOutcome(written=2, inserted=2, attempts=3)], ["postgres", "clickhouse"])
    report = summary.as_dict()
    assert [report[k] for k in ("messages", "written", "duplicates", "unmatched", "quarantined", "rejected")] == [
        5, 2, 1, 1, 1, 0]
    assert report["sinks"] == {
        "postgres": {"written": 2, "inserted": 1, "attempts": 1},
        "clickhouse": {"written": 2, "inserted": 2, "attempts": 3},
    }
    assert report["moved"] == [{"partition": 0, "old": None, "new": 5}]


def test_checksums_leave_out_write_times_and_lineage_only() -> None:
    columns = ["event_id", "employee_id", "received_at", "source_partition", "source_offset", "raw", "ingested_at"]
    assert checksum_columns(columns) == ["event_id", "employee_id", "received_at", "raw"]
    assert checksum_columns(["employee_id", "work_day", "flags", "computed_at"]) == ["employee_id", "work_day", "flags"]


def test_digests_are_sums_modulo_two_to_the_64() -> None:
    assert digest(0, 0) == "0" * 32
    assert digest(-1, 2**64 + 5) == "ffffffffffffffff" + "0000000000000005"
    assert digest(2**63, -(2**63)) == digest(2**63, 2**63)


def test_the_replay_forgets_ids_no_later_copy_could_duplicate() -> None:
    dedup = ReplayDedup(window_s=3600)
    for hour in range(48):  # one punch an hour for two days, each batch an hour later
        msg = Incoming("attendance.raw", 0, hour, b"SN", encode(enriched(hour).punch))
        dedup.begin({(0, hour): hour * HOUR_MS})
        plan = plan_batch([msg], dedup.already_seen, CODES.get)
        dedup.remember(to_remember(plan, plan.to_write))
        assert len(dedup) <= 4  # the newest message's window and the two before it, not the range
    assert len(dedup) == 3


def test_a_rebuild_keeps_the_history_of_deactivated_employees_but_not_of_removed_codes() -> None:
    employees = {
        "1": EmployeeRecord(attendance_code="1", employee_id="E-1", active=False),
        "2": None,  # removed from employees: a tombstone
        "3": EmployeeRecord(attendance_code="9", employee_id="E-9"),  # filed under another code
    }
    lookup = employee_lookup(employees)
    leaver = lookup("1")
    assert leaver is not None and leaver.employee_id == "E-1" and leaver.active
    assert lookup("2") is None and lookup("3") is None and lookup("4") is None
