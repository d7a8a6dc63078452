"""The quarantine as plain logic: DLQ messages -> rows, originals of each stage -> punches, selections."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from emulator.protocol import encode_time
from infra.quarantine import (
    QuarantineError, QuarantineRow, Selection, check_selection, parse_id, parse_when, row_dict, selection_query,
)
from infra.quarantine_revive import Refused, Revived, revive
from producers.registry import DeviceInfo
from schemas.codec import decode, encode
from schemas.punch import PunchSource, RawPunch, compute_event_id, make_raw_punch
from schemas.quarantine import Reason, Stage, quarantine
from sinks.postgres_quarantine import DlqMessage, quarantine_row, write_quarantine
from tapstream.settings import Settings, ValidationSettings

SERIAL = "CQZ7240001"
AT = datetime(2026, 3, 1, 2, 5, 7, tzinfo=UTC)
SETTINGS = Settings(_env_file=None)
DHAKA = {SERIAL: DeviceInfo(SERIAL, "Gate", "push", "Asia/Dhaka", "HQ", True)}
LINE = b"1001\t2026-03-01 08:00:00\t0\t15"


def row(stage: Stage, reason: Reason, original: bytes, *, serial: str | None = SERIAL, size: int | None = None) -> QuarantineRow:
    return QuarantineRow(
        dlq_partition=0, dlq_offset=7, reason=reason.value, detail="d", stage=stage.value, device_serial=serial,
        original=original, original_size=len(original) if size is None else size, source_topic=None,
        source_partition=None, source_offset=None, quarantined_at=AT, replayed_at=None, replay_note=None,
        ingested_at=AT,
    )


def punch(*, when: datetime = datetime(2026, 3, 1, 8, 0), tz: str = "Asia/Dhaka", state: int = 0) -> RawPunch:
    return make_raw_punch(
        device_serial=SERIAL, user_code="1001", device_time=when, device_tz=tz, punch_state=state, verify_mode=15,
        source=PunchSource.PUSH, raw="1001\t...", received_at=AT,
    )


def punches(result: Revived | Refused) -> list[RawPunch]:
    assert isinstance(result, Revived), result
    assert all(key == SERIAL.encode() for key, _ in result.messages)
    return [decode(RawPunch, value) for _, value in result.messages]


def refusal(result: Revived | Refused) -> str:
    assert isinstance(result, Refused), result
    return result.why


# --- DLQ messages -> quarantine rows ---------------------------------------------------------


def test_a_quarantine_record_becomes_its_row() -> None:
    record = quarantine(Reason.UNKNOWN_DEVICE, "device not in the registry", Stage.PUSH, LINE, device_serial=SERIAL, now=AT)
    values = quarantine_row(DlqMessage(2, 41, SERIAL.encode(), encode(record)))
    assert (values.dlq_partition, values.dlq_offset, values.reason, values.stage) == (2, 41, "unknown_device", "push")
    assert (values.device_serial, values.original, values.original_size, values.quarantined_at) == (SERIAL, LINE, len(LINE), AT)


def test_a_record_without_a_zone_is_read_as_utc() -> None:
    record = quarantine(Reason.BAD_FIELD, "x", Stage.PULL, b"r", now=AT).model_copy(update={"quarantined_at": AT.replace(tzinfo=None)})
    assert quarantine_row(DlqMessage(0, 0, None, encode(record))).quarantined_at == AT


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "null value"),
        (b"\xff\x00 not json", "not JSON"),
        (b'{"reason": "unknown_device"}', "stage"),
        (encode(quarantine(Reason.BAD_FIELD, "x", Stage.PUSH, b"")).replace(b'"original_b64":""', b'"original_b64":"abc"'), "original_b64"),
        (encode(quarantine(Reason.BAD_FIELD, "x", Stage.PUSH, b"", original_size=2**40)), "out of range"),
    ],
)
def test_a_message_that_is_not_a_quarantine_record_still_gets_a_row(value: bytes | None, why: str) -> None:
    now = datetime(2026, 5, 1, tzinfo=UTC)
    values = quarantine_row(DlqMessage(1, 9, b"DEV-1", value), now=now)
    assert (values.reason, values.stage, values.device_serial, values.quarantined_at) == ("undecodable_event", "stream", "DEV-1", now)
    assert values.original == (value or b"") and values.original_size == len(value or b"")
    assert why in values.detail


def test_text_postgres_cannot_store_is_replaced_not_fatal() -> None:
    record = encode(quarantine(Reason.BAD_FIELD, "x", Stage.PUSH, b"x", device_serial="AB"))
    values = quarantine_row(DlqMessage(0, 0, None, record.replace(b'"x"', b'"nul\\u0000"').replace(b'"AB"', b'"A\\u0000B"')))
    assert (values.reason, values.detail, values.device_serial) == ("bad_field", "nul\ufffd", "A\ufffdB")
    lone_surrogate = quarantine_row(DlqMessage(0, 1, None, record.replace(b'"x"', b'"\\ud800"')))
    assert lone_surrogate.reason == "undecodable_event"


class FakeCursor:
    def __init__(self, rowcount: int) -> None:
        self.rowcount = rowcount
        self.calls: list[tuple[str, list[list[Any]]]] = []

    def execute(self, query: str, params: list[list[Any]]) -> FakeCursor:
        self.calls.append((query, params))
        return self


def test_write_quarantine_inserts_the_batch_in_one_idempotent_statement() -> None:
    record = quarantine(Reason.NOT_TEXT, "x", Stage.PUSH, b"\xff", device_serial=SERIAL, now=AT)
    cur = FakeCursor(rowcount=1)
    inserted = write_quarantine(cur, [DlqMessage(0, 5, None, encode(record)), DlqMessage(1, 6, None, b"junk")])  # type: ignore[arg-type]
    ((query, columns),) = cur.calls
    assert inserted == 1 and "ON CONFLICT (dlq_partition, dlq_offset) DO NOTHING" in query
    assert columns[0] == [0, 1] and columns[1] == [5, 6] and columns[2] == ["not_text", "undecodable_event"]
    assert columns[6] == [b"\xff", b"junk"]
    assert write_quarantine(FakeCursor(0), []) == 0  # type: ignore[arg-type]


# --- push-stage originals ----------------------------------------------------------------------


def test_an_unknown_devices_line_becomes_a_punch_once_the_device_is_registered() -> None:
    quarantined = row(Stage.PUSH, Reason.UNKNOWN_DEVICE, LINE)
    assert refusal(revive(quarantined, {}, SETTINGS)).startswith("unknown_device: device not in the registry")
    (got,) = punches(revive(quarantined, DHAKA, SETTINGS))
    assert got.event_id == compute_event_id(SERIAL, "1001", datetime(2026, 3, 1, 8, 0), 0)
    assert (got.device_tz, got.punch_time, got.received_at) == ("Asia/Dhaka", datetime(2026, 3, 1, 2, 0, tzinfo=UTC), AT)
    assert (got.source, got.raw, got.verify_mode) == (PunchSource.PUSH, LINE.decode(), 15)


def test_a_disabled_device_is_still_refused() -> None:
    disabled = {SERIAL: DeviceInfo(SERIAL, "Gate", "push", "Asia/Dhaka", "HQ", False)}
    assert "disabled" in refusal(revive(row(Stage.PUSH, Reason.UNKNOWN_DEVICE, LINE), disabled, SETTINGS))


def test_a_line_still_malformed_is_refused_with_its_reason() -> None:
    assert refusal(revive(row(Stage.PUSH, Reason.BAD_TIMESTAMP, b"1001\t2026-13-01 08:00"), DHAKA, SETTINGS)).startswith("bad_timestamp:")


def test_a_body_is_all_or_nothing() -> None:
    body = LINE + b"\r\n" + b"1002\tnot a time\r\n"
    assert "bad_timestamp" in refusal(revive(row(Stage.PUSH, Reason.MALFORMED_LINE, body), DHAKA, SETTINGS))
    assert len(punches(revive(row(Stage.PUSH, Reason.MALFORMED_LINE, LINE + b"\r\n" + LINE.replace(b"1001", b"1002")), DHAKA, SETTINGS))) == 2


def test_a_registry_zone_typo_fixed_since_lets_the_line_through() -> None:
    typo = {SERIAL: DeviceInfo(SERIAL, "Gate", "push", "Asia/Dhakka", "HQ", True)}
    quarantined = row(Stage.PUSH, Reason.BAD_FIELD, LINE)
    assert "Asia/Dhakka" in refusal(revive(quarantined, typo, SETTINGS))
    assert punches(revive(quarantined, DHAKA, SETTINGS))[0].device_tz == "Asia/Dhaka"


def test_unknown_tables_and_truncated_bodies_are_not_replayable() -> None:
    assert "not attendance data" in refusal(revive(row(Stage.PUSH, Reason.UNKNOWN_TABLE, LINE), DHAKA, SETTINGS))
    truncated = row(Stage.PUSH, Reason.BODY_TOO_LARGE, LINE, size=10 * len(LINE))
    assert "MAX_BODY_BYTES" in refusal(revive(truncated, DHAKA, SETTINGS))


# --- pull-stage originals ----------------------------------------------------------------------

T = datetime(2026, 3, 1, 8, 0, 5)
PULL_DEVICE = {SERIAL: DeviceInfo(SERIAL, "Door", "pull", "Asia/Dhaka", "HQ", True, "10.0.0.9")}


def test_a_40_byte_log_record_becomes_a_polled_punch() -> None:
    record = struct.pack("<H24sBIB8x", 3, b"1001", 1, encode_time(T), 0)
    (got,) = punches(revive(row(Stage.PULL, Reason.BAD_FIELD, record), PULL_DEVICE, SETTINGS))
    assert (got.user_code, got.device_time, got.punch_state, got.verify_mode) == ("1001", T, 0, 1)
    assert (got.source, got.raw, got.device_tz, got.received_at) == (PunchSource.PULL_POLL, record.hex(), "Asia/Dhaka", AT)


def test_a_16_byte_log_record_keeps_its_work_code() -> None:
    record = struct.pack("<IIBB2xI", 1001, encode_time(T), 1, 4, 77)
    (got,) = punches(revive(row(Stage.PULL, Reason.BAD_FIELD, record), PULL_DEVICE, SETTINGS))
    assert (got.user_code, got.punch_state, got.verify_mode, got.work_code) == ("1001", 1, 4, "77")


def test_a_live_event_becomes_a_live_punch() -> None:
    text = f"live user_id=1001 time={T} status=15 punch=1".encode()
    (got,) = punches(revive(row(Stage.PULL, Reason.BAD_FIELD, text), PULL_DEVICE, SETTINGS))
    assert (got.source, got.user_code, got.device_time, got.punch_state, got.verify_mode) == (PunchSource.PULL_LIVE, "1001", T, 1, 15)


def test_pull_records_that_still_cannot_be_punches_are_refused() -> None:
    bad_time = struct.pack("<H24sBIB8x", 3, b"1001", 1, encode_time(datetime(2024, 2, 28)) + 2 * 86400, 0)
    assert refusal(revive(row(Stage.PULL, Reason.BAD_TIMESTAMP, bad_time), PULL_DEVICE, SETTINGS)).startswith("bad_timestamp:")
    live = b"live user_id=1001 time=None status=15 punch=1"
    assert refusal(revive(row(Stage.PULL, Reason.BAD_TIMESTAMP, live), PULL_DEVICE, SETTINGS)).startswith("bad_timestamp:")
    assert "backfill" in refusal(revive(row(Stage.PULL, Reason.BAD_FIELD, struct.pack("<HBIB", 3, 1, encode_time(T), 0)), PULL_DEVICE, SETTINGS))
    assert "neither" in refusal(revive(row(Stage.PULL, Reason.BAD_FIELD, b"abc"), PULL_DEVICE, SETTINGS))
    assert "not in the registry" in refusal(revive(row(Stage.PULL, Reason.BAD_FIELD, b"abc"), {}, SETTINGS))


# --- stream-stage originals --------------------------------------------------------------------


def test_a_punch_quarantined_by_the_stream_is_re_sent_as_is_once_the_rule_is_widened() -> None:
    old = punch(when=datetime(2008, 6, 1, 8, 0))
    quarantined = row(Stage.STREAM, Reason.IMPLAUSIBLE_TIME, encode(old))
    assert refusal(revive(quarantined, DHAKA, SETTINGS)).startswith("implausible_time:")
    widened = SETTINGS.model_copy(update={"validation": ValidationSettings(earliest_punch=date(2000, 1, 1))})
    result = revive(quarantined, DHAKA, widened)
    assert isinstance(result, Revived) and result.messages == [(SERIAL.encode(), encode(old))] and result.note == ""


def test_a_state_still_unknown_is_refused_and_a_sink_rejected_punch_is_re_sent() -> None:
    assert refusal(revive(row(Stage.STREAM, Reason.UNKNOWN_STATE, encode(punch(state=9))), {}, SETTINGS)).startswith("unknown_state:")
    assert punches(revive(row(Stage.STREAM, Reason.SINK_REJECTED, encode(punch())), {}, SETTINGS)) == [punch()]


def test_a_corrected_device_zone_re_resolves_the_punch() -> None:
    wrong = punch(tz="UTC", when=datetime(2026, 3, 1, 8, 0))
    result = revive(row(Stage.STREAM, Reason.IMPLAUSIBLE_TIME, encode(wrong)), DHAKA, SETTINGS)
    (got,) = punches(result)
    assert (got.event_id, got.device_tz, got.punch_time) == (wrong.event_id, "Asia/Dhaka", datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    assert isinstance(result, Revived) and result.note == "zone UTC -> Asia/Dhaka (registry)"


def test_undecodable_bytes_are_sent_only_if_they_decode_now() -> None:
    assert refusal(revive(row(Stage.STREAM, Reason.UNDECODABLE_EVENT, b"{oops"), {}, SETTINGS)).startswith("still not a valid punch")
    assert punches(revive(row(Stage.STREAM, Reason.UNDECODABLE_EVENT, encode(punch())), {}, SETTINGS)) == [punch()]


# --- selections --------------------------------------------------------------------------------


def test_ids_and_times_parse_or_say_what_is_expected() -> None:
    assert parse_id(" 3:1200 ") == (3, 1200)
    for bad in ("3", "a:1", "1:-2", ""):
        with pytest.raises(QuarantineError, match="PARTITION:OFFSET"):
            parse_id(bad)
    assert parse_when("6h", now=AT) == AT - timedelta(hours=6)
    assert parse_when("2d", now=AT) == AT - timedelta(days=2)
    assert parse_when("2026-03-01T02:05:07") == AT
    assert parse_when("2026-03-01T08:05:07+06:00") == AT
    with pytest.raises(QuarantineError, match="ISO 8601"):
        parse_when("yesterday")


def test_typos_in_reason_or_stage_are_refused() -> None:
    check_selection(Selection(reason="unknown_device", stage="push"))
    with pytest.raises(QuarantineError, match="unknown_device"):
        check_selection(Selection(reason="unknown-device"))
    with pytest.raises(QuarantineError, match="push, pull, stream"):
        check_selection(Selection(stage="kafka"))


def test_a_selection_becomes_one_filtered_query() -> None:
    query, params = selection_query(Selection(reason="bad_field", device=SERIAL, since=AT, limit=5))
    text = query.as_string(None)
    assert '"reason" = %s AND "device_serial" = %s AND "quarantined_at" >= %s AND replayed_at IS NULL' in text
    assert text.endswith("ORDER BY quarantined_at DESC, dlq_partition DESC, dlq_offset DESC LIMIT 5")
    assert params == ["bad_field", SERIAL, AT]
    everything, _ = selection_query(Selection(include_replayed=True, limit=None), newest_first=False)
    assert "WHERE" not in everything.as_string(None) and "LIMIT" not in everything.as_string(None)


def test_explicit_ids_select_replayed_rows_too() -> None:
    query, params = selection_query(Selection(ids=((0, 7), (1, 9))))
    assert "replayed_at" not in query.as_string(None).split("FROM quarantine")[1]
    assert params == [[0, 1], [7, 9]]


def test_a_row_for_json_or_csv_has_every_column_and_base64_bytes() -> None:
    out = row_dict(row(Stage.PUSH, Reason.NOT_TEXT, b"\xff\x00"))
    assert out["id"] == "0:7" and out["original"] == base64.b64encode(b"\xff\x00").decode()
    assert out["quarantined_at"] == AT.isoformat() and out["replayed_at"] is None
