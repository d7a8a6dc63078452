"""The worker's decisions for a batch, without Kafka or Faust."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from schemas.codec import encode
from schemas.employee import EmployeeRecord
from schemas.punch import PunchSource, RawPunch, make_raw_punch
from schemas.quarantine import Reason, Stage
from streams.catchup import CatchUp
from streams.logic import REMATCH_HEADER, Incoming, is_rematch, plan_batch, to_remember

EMPLOYEES = {
    "100": EmployeeRecord(attendance_code="100", employee_id="E-100"),
    "101": EmployeeRecord(attendance_code="101", employee_id="E-101", active=False),
}


def punch(code: str = "100", minute: int = 0, serial: str = "SN1") -> RawPunch:
    return make_raw_punch(
        device_serial=serial, user_code=code, device_time=datetime(2026, 11, 23, 8, minute),
        device_tz="Europe/Berlin", punch_state=0, verify_mode=1, source=PunchSource.PUSH,
        raw=f"{code}\t2026-11-23 08:{minute:02d}:00\t0\t1", received_at=datetime(2026, 11, 23, 7, 30, tzinfo=UTC),
    )


def msg(value: bytes | None, offset: int, partition: int = 0, key: bytes | None = b"SN1") -> Incoming:
    return Incoming(topic="attendance.raw", partition=partition, offset=offset, key=key, value=value)


def never_seen(msg: Incoming, event_id: uuid.UUID) -> bool:
    return False


def test_known_employee_is_enriched_with_lineage() -> None:
    plan = plan_batch([msg(encode(punch()), 7, partition=3)], never_seen, EMPLOYEES.get)
    [row] = plan.to_write
    assert row.employee_id == "E-100"
    assert (row.source_partition, row.source_offset) == (3, 7)
    assert plan.accounted == 1


def test_duplicates_within_a_batch_are_dropped_and_counted() -> None:
    value = encode(punch())
    plan = plan_batch([msg(value, 1), msg(value, 2), msg(encode(punch(minute=1)), 3)], never_seen, EMPLOYEES.get)
    assert [r.source_offset for r in plan.to_write] == [1, 3]
    assert plan.duplicates == 1
    assert plan.accounted == 3


def test_ids_seen_in_earlier_batches_are_dropped() -> None:
    seen = {punch().event_id}
    plan = plan_batch([msg(encode(punch()), 1)], lambda m, eid: eid in seen, EMPLOYEES.get)
    assert plan.to_write == [] and plan.duplicates == 1


def test_unknown_and_inactive_codes_are_parked_not_dropped() -> None:
    batch = [msg(encode(punch("999")), 1), msg(encode(punch("101")), 2)]
    plan = plan_batch(batch, never_seen, EMPLOYEES.get)
    assert [(u.punch.user_code, u.reason) for u in plan.unmatched] == [
        ("999", "unknown_employee"), ("101", "inactive_employee"),
    ]
    assert plan.to_write == []
    # remembered, so that a device's re-send of one is a duplicate rather than parked twice
    assert [s.event_id for s in to_remember(plan, plan.to_write)] == [punch("999").event_id, punch("101").event_id]


def test_a_device_resend_of_a_parked_punch_in_a_later_batch_is_a_duplicate() -> None:
    first = plan_batch([msg(encode(punch("999")), 1)], never_seen, EMPLOYEES.get)
    remembered = {s.event_id for s in to_remember(first, first.to_write)}
    again = plan_batch([msg(encode(punch("999")), 2)], lambda m, eid: eid in remembered, EMPLOYEES.get)
    assert again.unmatched == [] and again.duplicates == 1


def test_the_rematchers_resend_passes_the_dedup_table_but_not_a_copy_in_its_batch() -> None:
    value = encode(punch())
    resent = Incoming("attendance.raw", 0, 5, b"SN1", value, rematch=True)
    plan = plan_batch([resent, msg(value, 6)], lambda m, eid: True, EMPLOYEES.get)
    assert [r.source_offset for r in plan.to_write] == [5]
    assert plan.duplicates == 1


def test_the_rematch_header_is_found_in_either_header_shape() -> None:
    assert is_rematch([("x", b"1"), (REMATCH_HEADER, b"100")])
    assert is_rematch({REMATCH_HEADER: b"100"})
    assert not is_rematch([("x", b"1")]) and not is_rematch(None) and not is_rematch([])


def test_undecodable_values_are_quarantined_with_their_bytes_and_position() -> None:
    batch = [msg(b"\x00\xffgarbage", 4, partition=2), msg(None, 5), msg(b'{"schema_version": 1}', 6)]
    plan = plan_batch(batch, never_seen, EMPLOYEES.get)
    assert len(plan.quarantined) == 3
    first = plan.quarantined[0]
    assert first.reason is Reason.UNDECODABLE_EVENT and first.stage is Stage.STREAM
    assert first.original() == b"\x00\xffgarbage"
    assert (first.source_partition, first.source_offset, first.device_serial) == (2, 4, "SN1")
    assert "event_id" in plan.quarantined[2].detail


def test_a_bad_message_does_not_block_the_good_ones_behind_it() -> None:
    batch = [msg(b"nope", 1), msg(encode(punch()), 2)]
    plan = plan_batch(batch, never_seen, EMPLOYEES.get)
    assert len(plan.quarantined) == 1 and len(plan.to_write) == 1


def test_catch_up_is_ready_once_every_partition_reaches_its_end() -> None:
    catch_up = CatchUp({0: (0, 3), 1: (5, 5), 2: (2, 4)})
    assert not catch_up.ready
    catch_up.consumed(0, 2)
    assert not catch_up.ready
    catch_up.consumed(2, 3)
    assert catch_up.ready


def test_catch_up_on_an_empty_or_consumed_topic_is_ready_at_once() -> None:
    assert CatchUp({}).ready
    assert CatchUp({0: (4, 4)}).ready


def punch_at(device_time: datetime, state: int = 0) -> RawPunch:
    return make_raw_punch(
        device_serial="SN1", user_code="100", device_time=device_time, device_tz="Europe/Berlin",
        punch_state=state, verify_mode=1, source=PunchSource.PULL_POLL, raw="00ff",
        received_at=datetime(2026, 11, 23, 7, 30, tzinfo=UTC),
    )


def test_implausible_times_and_states_are_quarantined_with_their_reason_and_bytes() -> None:
    reset = encode(punch_at(datetime(2000, 1, 1, 0, 3)))  # a device whose clock battery died
    future = encode(punch_at(datetime(2027, 2, 1, 8, 0)))  # months ahead of its receipt
    odd_state = encode(punch_at(datetime(2026, 11, 23, 8, 1), state=9))
    fine = encode(punch_at(datetime(2026, 11, 24, 8, 0)))  # a day ahead: a zone mix-up, still kept
    plan = plan_batch([msg(reset, 1), msg(future, 2), msg(odd_state, 3), msg(fine, 4)], never_seen, EMPLOYEES.get)
    assert [(q.reason, q.source_offset) for q in plan.quarantined] == [
        (Reason.IMPLAUSIBLE_TIME, 1), (Reason.IMPLAUSIBLE_TIME, 2), (Reason.UNKNOWN_STATE, 3),
    ]
    assert plan.quarantined[0].original() == reset and "clock reset" in plan.quarantined[0].detail
    assert [r.punch.punch_state for r in plan.to_write] == [0] and plan.accounted == 4


def test_the_accepted_states_and_window_are_settings() -> None:
    from tapstream.settings import ValidationSettings

    rules = ValidationSettings(punch_states=[0, 1, 9], earliest_punch=date(1999, 1, 1))
    batch = [msg(encode(punch_at(datetime(2000, 1, 1, 0, 3))), 1), msg(encode(punch_at(datetime(2026, 11, 23, 8), 9)), 2)]
    plan = plan_batch(batch, never_seen, EMPLOYEES.get, rules)
    assert plan.quarantined == [] and len(plan.to_write) == 2
