"""The ADMS protocol functions: ATTLOG parsing, replies, handshake, query and command bodies."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from producers import adms
from schemas.punch import PunchSource, compute_event_id
from schemas.quarantine import Reason, Stage
from tapstream.settings import PushSettings

RECEIVED = datetime(2024, 7, 28, 12, 0, tzinfo=UTC)
SERIAL = "BOCK200961014"


def parse(body: bytes, tz: str = "Asia/Dhaka") -> adms.ParsedBatch:
    return adms.parse_attlog(body, device_serial=SERIAL, device_tz=tz, received_at=RECEIVED)


def reasons(batch: adms.ParsedBatch) -> list[Reason]:
    return [q.reason for q in batch.quarantined]


# --- the spec's own examples ------------------------------------------------------------------

E2_BODY = b"".join(
    b"%s\t2015-07-30 15:16:%02d\t0\t1\t0\t0\t0\n" % (pin, sec)
    for pin, sec in [(b"1452", 28), (b"1452", 29), (b"3", 30), (b"4", 31), (b"5", 32), (b"6", 33),
                     (b"7", 34), (b"8", 35), (b"8965", 37)]
)
E9_BODY = (
    b"1\t2024-07-28 01:25:24\t0\t1\t\t0\t0\t\r\n"
    b"1\t2024-07-28 10:41:21\t0\t1\t\t0\t0\t\r\n"
    b"4\t2024-07-28 10:41:31\t0\t1\t\t0\t0\t\r\n"
)


def test_e2_attlog_nine_lines() -> None:
    batch = parse(E2_BODY, tz="Asia/Shanghai")
    assert batch.lines == 9 and len(batch.punches) == 9 and not batch.quarantined
    first = batch.punches[0]
    assert first.user_code == "1452"
    assert first.device_time == datetime(2015, 7, 30, 15, 16, 28)
    assert first.punch_time == datetime(2015, 7, 30, 7, 16, 28, tzinfo=UTC)
    assert (first.punch_state, first.verify_mode, first.work_code) == (0, 1, "0")
    assert first.source is PunchSource.PUSH
    assert first.raw == "1452\t2015-07-30 15:16:28\t0\t1\t0\t0\t0"
    assert adms.upload_reply("ATTLOG", batch.lines) == "OK: 9"


def test_e9_crlf_trailing_tab_empty_workcode() -> None:
    batch = parse(E9_BODY)
    assert batch.lines == 3 and len(batch.punches) == 3
    assert [p.user_code for p in batch.punches] == ["1", "1", "4"]
    assert batch.punches[0].work_code == ""
    assert batch.punches[0].raw == "1\t2024-07-28 01:25:24\t0\t1\t\t0\t0\t"  # no CR, trailing TAB kept
    assert batch.punches[0].punch_time == datetime(2024, 7, 27, 19, 25, 24, tzinfo=UTC)  # Dhaka is UTC+6


def test_e3_operlog_is_counted() -> None:
    assert adms.count_lines(b"OPLOG 4\t14\t2015-07-30 10:22:34\t0\t0\t0\t0\n") == 1
    body = b"OPLOG 13\t0\t2024-03-12 11:03:28\t0\t0\t0\t0\r\nOPLOG 0\t0\t2024-03-12 11:03:48\t0\t0\t0\t0\r\n"
    assert adms.upload_reply("OPERLOG", adms.count_lines(body)) == "OK: 2"


def test_event_ids_are_deterministic() -> None:
    first, again = parse(E9_BODY), parse(E9_BODY)
    assert [p.event_id for p in first.punches] == [p.event_id for p in again.punches]
    punch = first.punches[1]
    assert punch.event_id == compute_event_id(SERIAL, "1", datetime(2024, 7, 28, 10, 41, 21), 0)


# --- line shapes --------------------------------------------------------------------------------

def test_mixed_line_endings_and_blank_lines() -> None:
    body = b"\n\r\n1\t2024-01-01 08:00:00\t0\t1\r\n\n2\t2024-01-01 08:01:00\t1\t15\n\t\t\n   \n3\t2024-01-01 08:02:00\t0\t1"
    batch = parse(body)
    assert batch.lines == 3  # blank and whitespace-only lines are not records
    assert [p.user_code for p in batch.punches] == ["1", "2", "3"]


@pytest.mark.parametrize("count", range(2, 13))
def test_field_counts_2_to_12(count: int) -> None:
    fields = ["77", "2024-02-29 23:59:59", "1", "15", "5", "0", "0", "1", "36.2", "97.2", "X", "Y"][:count]
    batch = parse("\t".join(fields).encode())
    assert len(batch.punches) == 1, batch.quarantined
    punch = batch.punches[0]
    assert punch.punch_state == (1 if count >= 3 else adms.UNDEFINED_STATE)
    assert punch.verify_mode == (15 if count >= 4 else 0)
    assert punch.work_code == ("5" if count >= 5 else "")


def test_empty_status_and_verify_take_defaults() -> None:
    (punch,) = parse(b"9\t2024-01-01 08:00:00\t\t\t\n").punches
    assert (punch.punch_state, punch.verify_mode) == (255, 0)


def test_key_value_rtlog_line() -> None:
    line = b"time=2024-05-01 09:00:00\tpin=1001\tcardno=0\teventaddr=1\tevent=0\tinoutstatus=1\tverifytype=15\tindex=7\t"
    (punch,) = parse(line).punches
    assert (punch.user_code, punch.punch_state, punch.verify_mode) == ("1001", 1, 15)
    assert punch.device_time == datetime(2024, 5, 1, 9, 0)
    assert punch.raw == line.decode()


def test_key_value_line_without_pin() -> None:
    batch = parse(b"time=2024-05-01 09:00:00\tevent=8\tinoutstatus=0\n")
    assert reasons(batch) == [Reason.MISSING_FIELDS]


def test_key_value_line_with_bare_field() -> None:
    assert reasons(parse(b"time=2024-05-01 09:00:00\tpin=1\tgarbage\n")) == [Reason.MALFORMED_LINE]


# --- bad lines: each quarantined with a precise reason, good neighbours kept ---------------------

@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"1452", Reason.MISSING_FIELDS),
        (b"1452\t", Reason.MISSING_FIELDS),
        (b"1452\t\t0\t1", Reason.MISSING_FIELDS),
        (b"\t2024-01-01 08:00:00\t0\t1", Reason.BAD_FIELD),
        (b"x" * 65 + b"\t2024-01-01 08:00:00", Reason.BAD_FIELD),
        (b"1\t2024-13-01 08:00:00\t0\t1", Reason.BAD_TIMESTAMP),
        (b"1\t2024-02-30 08:00:00\t0\t1", Reason.BAD_TIMESTAMP),
        (b"1\t30/07/2015 15:16:28\t0\t1", Reason.BAD_TIMESTAMP),
        (b"1\t2015-07-30T15:16:28\t0\t1", Reason.BAD_TIMESTAMP),
        (b"1\t0001-01-01 00:00:00\t0\t1", Reason.BAD_TIMESTAMP),  # overflows when moved to UTC
        (b"1\t2024-01-01 08:00:00\tin\t1", Reason.BAD_FIELD),
        (b"1\t2024-01-01 08:00:00\t256\t1", Reason.BAD_FIELD),
        (b"1\t2024-01-01 08:00:00\t-1\t1", Reason.BAD_FIELD),
        (b"1\t2024-01-01 08:00:00\t0\tface", Reason.BAD_FIELD),
        (b"1\t2024-01-01 08:00:00\t0\t70000", Reason.BAD_FIELD),
        (b"1\t2024-01-01 08:00:00\t0\t1\t" + b"w" * 65, Reason.BAD_FIELD),
        (b"OPLOG 4\t14\t2015-07-30 10:22:34\t0\t0\t0\t0", Reason.MALFORMED_LINE),
        (b"1\xff\t2024-01-01 08:00:00\t0\t1", Reason.NOT_TEXT),
        (b"1\x00\t2024-01-01 08:00:00\t0\t1", Reason.NOT_TEXT),
        (b"\x00\x00\x00\x00", Reason.NOT_TEXT),
    ],
)
def test_bad_line_reason(line: bytes, reason: Reason) -> None:
    batch = parse(b"1\t2024-01-01 07:00:00\t0\t1\n" + line + b"\r\n2\t2024-01-01 09:00:00\t1\t1\n")
    assert batch.lines == 3
    assert [p.user_code for p in batch.punches] == ["1", "2"]
    (record,) = batch.quarantined
    assert record.reason is reason, record.detail
    assert record.stage is Stage.PUSH and record.device_serial == SERIAL
    assert record.original() == line and record.original_size == len(line)


def test_impossible_but_parseable_time_is_accepted() -> None:
    (punch,) = parse(b"1\t2000-01-01 00:00:07\t0\t1\n").punches  # a reset clock: the stream judges
    assert punch.device_time.year == 2000


def test_binary_garbage_never_raises_and_keeps_good_lines() -> None:
    rng = random.Random(20240728)
    good = b"5\t2024-01-01 08:00:00\t0\t1\n"
    for _ in range(200):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        batch = parse(good + noise + b"\n" + good)
        assert len(batch.punches) >= 2
        assert batch.lines == len(batch.punches) + len(batch.quarantined)
        assert batch.lines == adms.count_lines(good + noise + b"\n" + good)


def test_unknown_device_timezone_quarantines_every_line() -> None:
    batch = parse(E9_BODY, tz="Mars/Olympus_Mons")
    assert batch.lines == 3 and not batch.punches
    assert reasons(batch) == [Reason.BAD_FIELD] * 3
    assert "Mars/Olympus_Mons" in batch.quarantined[0].detail


def test_empty_body() -> None:
    batch = parse(b"")
    assert (batch.lines, batch.punches, batch.quarantined) == (0, [], [])
    assert adms.upload_reply("ATTLOG", 0) == "OK: 0"


# --- replies, tables, query ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("table", "reply"),
    [("ATTLOG", "OK: 4"), ("attlog", "OK: 4"), ("OPERLOG", "OK: 4"), ("BIODATA", "OK: 4"),
     ("ATTPHOTO", "OK"), ("options", "OK"), ("rtlog", "OK"), ("ERRORLOG", "OK")],
)
def test_upload_reply(table: str, reply: str) -> None:
    assert adms.upload_reply(table, 4) == reply


def test_table_kinds() -> None:
    assert adms.table_kind("ATTLOG") is adms.TableKind.PUNCHES
    assert adms.table_kind("rtlog") is adms.TableKind.PUNCHES
    assert adms.table_kind("OPERLOG") is adms.TableKind.COUNTED
    assert adms.table_kind("ATTPHOTO") is adms.TableKind.PLAIN
    assert adms.table_kind("FOO") is None and adms.table_kind(None) is None


def test_parse_query() -> None:
    query = adms.parse_query(
        "SN=BOCK200961014&options=all&language=69&pushver=2.4.0&DeviceType=middle%20east&PushOptionsFlag=1"
    )
    assert (query.serial, query.options, query.pushver, query.table) == (SERIAL, "all", "2.4.0", None)
    assert query.params["devicetype"] == "middle east"
    upload = adms.parse_query("sn=X1&table=ATTLOG&Stamp=9999")
    assert (upload.serial, upload.table, upload.stamp) == ("X1", "ATTLOG", "9999")
    assert adms.parse_query("table=ATTLOG").serial is None
    assert adms.parse_query("SN=&table=ATTLOG").serial is None
    info = adms.parse_query("SN=1&INFO=Ver%202.0.12-20150625,0,0,0,192.168.16.27,10,7,15,0,111")
    assert info.info == "Ver 2.0.12-20150625,0,0,0,192.168.16.27,10,7,15,0,111"


def test_valid_serial() -> None:
    assert adms.valid_serial("0316144680030") and adms.valid_serial("CJDE-1234_5")
    assert not adms.valid_serial("") and not adms.valid_serial("a b") and not adms.valid_serial("x" * 65)
    assert not adms.valid_serial("1\t2")


# --- handshake ------------------------------------------------------------------------------------

def handshake(tz: str | None, now: datetime = RECEIVED) -> dict[str, str]:
    body = adms.handshake_body(SERIAL, PushSettings(), tz, now=now)
    first, *rest = body.splitlines()
    assert first == f"GET OPTION FROM: {SERIAL}"
    return dict(line.split("=", 1) for line in rest)


def test_handshake_keys() -> None:
    keys = handshake("Asia/Dhaka")
    for stamp in ("ATTLOGStamp", "OPERLOGStamp", "ATTPHOTOStamp", "Stamp", "OpStamp", "PhotoStamp"):
        assert keys[stamp] not in ("0", "")
    assert keys["TransFlag"].startswith("TransData AttLog\tOpLog")
    assert (keys["Realtime"], keys["Encrypt"], keys["PushProtVer"]) == ("1", "0", "2.4.1")
    settings = PushSettings()
    assert keys["Delay"] == str(settings.delay_s)
    assert keys["ErrorDelay"] == str(settings.error_delay_s)
    assert keys["TransInterval"] == str(settings.trans_interval_min)
    assert keys["TimeZone"] == "6"


@pytest.mark.parametrize(
    ("tz", "now", "expected"),
    [
        ("UTC", RECEIVED, "0"),
        ("Asia/Kolkata", RECEIVED, "330"),  # half-hour zone: minutes
        ("Asia/Kathmandu", RECEIVED, "345"),
        ("America/St_Johns", datetime(2024, 1, 15, tzinfo=UTC), "-210"),
        ("America/New_York", datetime(2024, 1, 15, tzinfo=UTC), "-5"),
        ("America/New_York", datetime(2024, 7, 15, tzinfo=UTC), "-4"),  # DST: offset now
        ("Europe/Berlin", datetime(2024, 7, 15, tzinfo=UTC), "2"),
        ("Pacific/Auckland", datetime(2024, 1, 15, tzinfo=UTC), "780"),  # +13: outside ±11 hours
        ("Pacific/Kiritimati", RECEIVED, "840"),
        ("Etc/GMT+12", RECEIVED, "-720"),
    ],
)
def test_handshake_timezone(tz: str, now: datetime, expected: str) -> None:
    assert handshake(tz, now)["TimeZone"] == expected


def test_handshake_without_zone_omits_timezone() -> None:
    assert "TimeZone" not in handshake(None)


# --- devicecmd and options -----------------------------------------------------------------------

def test_parse_devicecmd_e8_and_continuations() -> None:
    body = (
        b"ID=info8487&Return=0&CMD=DATA\nID=fp7464&Return=-1002&CMD=DATA\r\n"
        b"ID=32&Return=0&CMD=Shell\nContent=a=b&c\n"
        b"ID=9&Return=0&CMD=VERIFY SUM&StartTime=2024-01-01 00:00:00&AttlogSum=12\n"
    )
    results = adms.parse_devicecmd(body)
    assert [(r.command_id, r.return_code, r.command) for r in results] == [
        ("info8487", 0, "DATA"), ("fp7464", -1002, "DATA"), ("32", 0, "Shell"), ("9", 0, "VERIFY SUM"),
    ]
    assert results[2].extra == {"Content": "a=b", "c": ""}
    assert results[3].extra["AttlogSum"] == "12"
    assert adms.parse_devicecmd(b"\xff\xfe garbage") != []  # decoded with replacement, never raises


def test_parse_options_rejoins_commas() -> None:
    options = adms.parse_options(b"FingerFunOn=1,~OEMVendor=ZKTECO CO., LTD.,FaceFunOn=0")
    assert options == {"FingerFunOn": "1", "~OEMVendor": "ZKTECO CO., LTD.", "FaceFunOn": "0"}
