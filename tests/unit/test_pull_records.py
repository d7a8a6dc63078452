"""Parsing a pull device's log buffer, and the high-water mark that says where "new" starts."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest

from producers.pull.marks import Mark, fingerprint, mark_after, resume_point
from producers.pull.records import BadEntry, LogEntry, decode_packed_time, live_entry, parse_log, record_size
from schemas.quarantine import Reason


def packed(t: datetime) -> int:
    """The device's time encoding, written out independently of the decoder under test."""
    return ((t.year % 100) * 12 * 31 + (t.month - 1) * 31 + t.day - 1) * 86400 + (t.hour * 60 + t.minute) * 60 + t.second


def rec40(uid: int, code: bytes, verify: int, when: int, state: int) -> bytes:
    return struct.pack("<H24sBIB", uid, code, verify, when, state) + b"\x00\x00\x00\x00\xff\x00\x00\x00"


def dataset(records: list[bytes]) -> bytes:
    body = b"".join(records)
    return struct.pack("<I", len(body)) + body


T1 = datetime(2024, 3, 15, 8, 30, 5)
T2 = datetime(2026, 11, 23, 17, 2, 59)


def test_packed_time_matches_the_reference_example() -> None:
    assert packed(T1) == 777976205  # zk-pull-protocol.md §10.3
    assert decode_packed_time(777976205) == T1
    assert decode_packed_time(packed(T2)) == T2


def test_packed_time_of_an_impossible_date_raises() -> None:
    with pytest.raises(ValueError):
        decode_packed_time(packed(datetime(2024, 2, 28)) + 2 * 86400)  # "February 30th"


def test_40_byte_records_keep_code_state_and_verify() -> None:
    buf = dataset([rec40(1, b"1001", 1, packed(T1), 0), rec40(2, b"ABC-7", 15, packed(T2), 5)])
    entries = parse_log(buf, 2)
    assert entries == [
        LogEntry(0, buf[4:44], "1001", T1, 0, 1),
        LogEntry(1, buf[44:84], "ABC-7", T2, 5, 15),
    ]


def test_16_byte_records_have_state_before_verify_and_a_work_code() -> None:
    body = struct.pack("<IIBB2xI", 1001, packed(T1), 1, 4, 0) + struct.pack("<IIBB2xI", 42, packed(T2), 0, 1, 77)
    entries = parse_log(struct.pack("<I", len(body)) + body, 2)
    assert [(e.user_code, e.device_time, e.state, e.verify, e.work_code) for e in entries if isinstance(e, LogEntry)] == [
        ("1001", T1, 1, 4, ""), ("42", T2, 0, 1, "77"),
    ]


def test_8_byte_records_map_the_internal_number_to_the_pin() -> None:
    body = struct.pack("<HBIB", 3, 1, packed(T1), 1) + struct.pack("<HBIB", 9, 1, packed(T2), 0)
    entries = parse_log(struct.pack("<I", len(body)) + body, 2, {3: "1003"})
    assert [(e.user_code, e.state) for e in entries if isinstance(e, LogEntry)] == [("1003", 1), ("9", 0)]


def test_a_bad_record_is_kept_apart_and_the_rest_still_parse() -> None:
    bad_time = packed(datetime(2024, 2, 28)) + 2 * 86400
    buf = dataset([rec40(1, b"1001", 1, packed(T1), 0), rec40(2, b"1002", 1, bad_time, 0),
                   rec40(3, b"", 1, packed(T2), 0), rec40(4, b"\xff\xfe", 1, packed(T2), 0),
                   rec40(5, b"1005", 1, packed(T2), 1)])
    entries = parse_log(buf, 5)
    assert [type(e).__name__ for e in entries] == ["LogEntry", "BadEntry", "BadEntry", "BadEntry", "LogEntry"]
    bad = [e for e in entries if isinstance(e, BadEntry)]
    assert [b.reason for b in bad] == [Reason.BAD_TIMESTAMP, Reason.BAD_FIELD, Reason.BAD_FIELD]
    assert bad[0].raw == buf[44:84] and bad[0].position == 1


def test_a_count_that_disagrees_with_the_buffer_falls_back_to_a_layout_that_fits() -> None:
    assert record_size(400, 10) == 40
    assert record_size(400, 11) == 40  # a punch landed between the count and the download
    assert record_size(48, 5) == 16
    with pytest.raises(ValueError, match="no known record layout"):
        record_size(41, 1)


def test_truncated_and_empty_buffers() -> None:
    full = dataset([rec40(1, b"1001", 1, packed(T1), 0)])
    with pytest.raises(ValueError, match="truncated"):
        parse_log(full[:-5], 1)
    assert parse_log(b"", 0) == [] and parse_log(struct.pack("<I", 0), 0) == []


def test_live_entries_read_status_as_verify_and_punch_as_state() -> None:
    entry = live_entry("1001", T1.replace(microsecond=5), 15, 1)
    assert isinstance(entry, LogEntry)
    assert (entry.user_code, entry.device_time, entry.state, entry.verify) == ("1001", T1, 1, 15)
    assert isinstance(live_entry("", T1, 1, 0), BadEntry)
    assert isinstance(live_entry("1001", "garbage", 1, 0), BadEntry)


# --- high-water mark --------------------------------------------------------------------------

LOG = [b"rec-%d" % i for i in range(10)]


def test_mark_round_trips_and_unreadable_marks_start_over() -> None:
    mark = mark_after(LOG[:4])
    assert Mark.decode(mark.encode()) == mark == Mark(4, fingerprint(b"rec-3"))
    assert Mark.decode(None) is None and Mark.decode("junk") is None
    assert mark_after([]) == Mark(0, "")


def test_resume_after_the_mark_when_the_log_grew() -> None:
    assert resume_point(LOG, None).start == 0
    assert resume_point(LOG, mark_after(LOG[:4])).start == 4
    assert resume_point(LOG, mark_after(LOG)).start == 10
    assert resume_point(LOG, Mark(0, "")).start == 0


def test_resume_after_the_mark_when_the_oldest_records_were_overwritten() -> None:
    wrapped = LOG[3:] + [b"rec-10", b"rec-11"]  # capacity reached: oldest three dropped
    resume = resume_point(wrapped, mark_after(LOG[:6]))
    assert resume.start == 3 and wrapped[resume.start] == b"rec-6"


def test_a_cleared_log_is_produced_again_from_the_start() -> None:
    cleared = [b"new-0", b"new-1"]
    resume = resume_point(cleared, mark_after(LOG))
    assert resume.start == 0 and "cleared" in resume.why


def test_backfill_selects_by_device_time_and_keeps_bad_records_only_for_the_whole_log() -> None:
    from producers.pull.backfill import select_since

    good = [LogEntry(i, b"r%d" % i, "1001", T1.replace(minute=i), 0, 1) for i in range(5)]
    bad = BadEntry(5, b"\xff", Reason.BAD_TIMESTAMP, "x")
    log = [*good, bad]
    assert select_since(log, None) == log
    assert select_since(log, T1.replace(minute=3)) == good[3:]
