"""The event contracts cannot drift silently: frozen examples, committed JSON Schemas, event ids.

* every frozen example (schemas/examples/<contract>.v<N>.json) still decodes into its model,
  and every version of every contract has one;
* the committed JSON Schemas (schemas/jsonschema/) are exactly what the models export now;
* the event id is a pure function of (serial, user code, device time, state) and the frozen
  example's id is still reproduced (the namespace and key format are fixed forever);
* device wall-clock times resolve to UTC across DST as schemas/punch.py documents;
* invalid punches and garbage bytes are refused with the stable reason code.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.codec import CONTRACTS, current_version, decode, encode, export_json_schemas
from schemas.employee import EmployeeRecord
from schemas.punch import PunchSource, RawPunch, compute_event_id, make_raw_punch, resolve_utc
from schemas.quarantine import QuarantineRecord, Reason
from tapstream.errors import ContractError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))
EXAMPLE_NAME = re.compile(r"^(?P<contract>[a-z_]+)\.v(?P<version>[1-9][0-9]*)\.json$")


def _contract_of(path: Path) -> tuple[type[BaseModel], int]:
    match = EXAMPLE_NAME.match(path.name)
    assert match, f"{path.name}: frozen examples are named <contract>.v<N>.json"
    assert match["contract"] in CONTRACTS, f"{path.name}: no contract {match['contract']!r} in schemas.codec.CONTRACTS"
    return CONTRACTS[match["contract"]], int(match["version"])


def test_there_are_frozen_examples() -> None:
    assert EXAMPLES, f"no frozen examples in {SCHEMAS / 'examples'}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_frozen_example_decodes_into_its_model(path: Path) -> None:
    model, version = _contract_of(path)
    data = path.read_bytes()
    assert json.loads(data)["schema_version"] == version, f"{path.name} says another version inside"
    assert version <= current_version(model)
    event = decode(model, data)
    assert isinstance(event, model)
    assert event.schema_version == current_version(model)  # type: ignore[attr-defined]  # every contract has it
    assert decode(model, encode(event)) == event  # what we write, we read back


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_every_version_of_every_contract_has_a_frozen_example(name: str) -> None:
    have = {_contract_of(p)[1] for p in EXAMPLES if p.name.startswith(f"{name}.v")}
    assert have == set(range(1, current_version(CONTRACTS[name]) + 1)), (
        f"{name}: freeze an example of every version in schemas/examples/ (have {sorted(have)})"
    )


def test_frozen_raw_punch_still_gets_its_event_id_and_utc_time() -> None:
    punch = decode(RawPunch, (SCHEMAS / "examples" / "raw_punch.v1.json").read_bytes())
    key = (punch.device_serial, punch.user_code, punch.device_time, punch.punch_state)
    assert punch.event_id == compute_event_id(*key)
    assert punch.punch_time == resolve_utc(punch.device_time, punch.device_tz)


def test_frozen_quarantine_record_keeps_the_original_bytes() -> None:
    record = decode(QuarantineRecord, (SCHEMAS / "examples" / "quarantine.v1.json").read_bytes())
    assert record.reason is Reason.BAD_TIMESTAMP
    assert record.original() == b"1452\t2015-13-40 99:00:00\t0\t1"
    assert record.original_size == len(record.original())


def test_committed_json_schemas_match_the_models(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path / "jsonschema")
    committed = SCHEMAS / "jsonschema"
    assert sorted(p.name for p in written) == sorted(p.name for p in committed.glob("*.json")), (
        "schemas/jsonschema/ has other files than the contracts export: run `tapstream schemas export`"
    )
    for path in written:
        assert (committed / path.name).read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{path.name} drifted from the model: run `tapstream schemas export` and bump the version if needed"
        )


def test_readers_ignore_fields_they_do_not_know() -> None:
    data = json.loads((SCHEMAS / "examples" / "employee.v1.json").read_bytes())
    data["badge_colour"] = "blue"
    assert decode(EmployeeRecord, json.dumps(data).encode()).attendance_code == "1452"


# --- event id ---------------------------------------------------------------------------------

BASE: dict[str, Any] = dict(
    device_serial="CQZ7232160001", user_code="1452", device_time=datetime(2026, 3, 2, 8, 15, 7),
    device_tz="Europe/Berlin", punch_state=0, verify_mode=1, source=PunchSource.PUSH,
    raw="1452\t2026-03-02 08:15:07\t0\t1", received_at=datetime(2026, 3, 2, 7, 15, 9, tzinfo=UTC),
)


def punch(**changes: Any) -> RawPunch:
    return make_raw_punch(**{**BASE, **changes})


def test_event_id_is_a_uuid5_and_deterministic() -> None:
    first, again = punch(), punch()
    assert first.event_id == again.event_id
    assert first.event_id.version == 5
    assert first.event_id == compute_event_id("CQZ7232160001", "1452", datetime(2026, 3, 2, 8, 15, 7), 0)


@pytest.mark.parametrize(
    "change",
    [
        {"verify_mode": 15},  # some firmware reports another verify code on a re-read
        {"received_at": datetime(2026, 3, 3, 0, 0, tzinfo=UTC)},  # a re-sent batch, a replay
        {"source": PunchSource.PULL_POLL},  # the same punch polled after it was pushed
        {"raw": "1452\t2026-03-02 08:15:07\t0\t1\t\t0\t0"},  # another firmware's line shape
        {"work_code": "7"},
        {"device_tz": "Asia/Dhaka"},  # a zone corrected in the registry later
    ],
    ids=lambda change: next(iter(change)),
)
def test_event_id_ignores_how_and_when_the_punch_was_read(change: dict[str, Any]) -> None:
    assert punch(**change).event_id == punch().event_id


@pytest.mark.parametrize(
    "change",
    [
        {"device_serial": "CQZ7232160002"},
        {"user_code": "1453"},
        {"device_time": datetime(2026, 3, 2, 8, 15, 8)},  # one second later
        {"device_time": datetime(2027, 3, 2, 8, 15, 7)},
        {"punch_state": 1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_event_id_changes_with_what_identifies_the_punch(change: dict[str, Any]) -> None:
    assert punch(**change).event_id != punch().event_id


def test_event_id_fields_cannot_run_into_each_other() -> None:
    # ("12", "3...") and ("1", "23...") must not make the same key.
    at = datetime(2026, 3, 2, 8, 0)
    assert compute_event_id("SN12", "3", at, 0) != compute_event_id("SN1", "23", at, 0)


# --- device time to UTC -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("local", "tz", "utc"),
    [
        (datetime(2026, 1, 15, 8, 0), "Europe/Berlin", datetime(2026, 1, 15, 7, 0)),  # CET
        (datetime(2026, 7, 15, 8, 0), "Europe/Berlin", datetime(2026, 7, 15, 6, 0)),  # CEST
        # Skipped by the spring change (02:00 -> 03:00): read with the pre-transition offset, +01:00.
        (datetime(2026, 3, 29, 2, 30), "Europe/Berlin", datetime(2026, 3, 29, 1, 30)),
        (datetime(2026, 3, 29, 1, 59, 59), "Europe/Berlin", datetime(2026, 3, 29, 0, 59, 59)),
        (datetime(2026, 3, 29, 3, 0), "Europe/Berlin", datetime(2026, 3, 29, 1, 0)),
        # Repeated by the autumn change (03:00 -> 02:00): the first occurrence (fold=0), +02:00.
        (datetime(2026, 10, 25, 2, 30), "Europe/Berlin", datetime(2026, 10, 25, 0, 30)),
        (datetime(2026, 11, 1, 1, 30), "America/New_York", datetime(2026, 11, 1, 5, 30)),  # EDT first
        (datetime(2026, 3, 8, 2, 30), "America/New_York", datetime(2026, 3, 8, 7, 30)),  # EST before
        (datetime(2026, 7, 1, 9, 0), "Asia/Dhaka", datetime(2026, 7, 1, 3, 0)),  # no DST
        (datetime(2026, 7, 1, 9, 0), "UTC", datetime(2026, 7, 1, 9, 0)),
    ],
)
def test_resolve_utc_follows_the_documented_dst_rules(local: datetime, tz: str, utc: datetime) -> None:
    resolved = resolve_utc(local, tz)
    assert resolved == utc.replace(tzinfo=UTC)
    assert resolved.utcoffset() == timedelta(0)


def test_resolve_utc_ignores_a_fold_set_by_the_caller() -> None:
    second = datetime(2026, 10, 25, 2, 30, fold=1)
    assert resolve_utc(second, "Europe/Berlin") == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_resolve_utc_refuses_an_unknown_zone() -> None:
    with pytest.raises(ValueError, match="unknown IANA timezone"):
        resolve_utc(datetime(2026, 1, 1, 8, 0), "Europe/Atlantis")


# --- what a RawPunch refuses ------------------------------------------------------------------

def _fields(**changes: Any) -> dict[str, Any]:
    return {**punch().model_dump(), **changes}


@pytest.mark.parametrize(
    "change",
    [
        {"device_time": datetime(2026, 3, 2, 8, 15, 7, tzinfo=timezone(timedelta(hours=1)))},  # aware
        {"device_time": datetime(2026, 3, 2, 8, 15, 7, tzinfo=UTC)},
        {"punch_time": datetime(2026, 3, 2, 8, 15, 7, tzinfo=timezone(timedelta(hours=1)))},  # not UTC
        {"punch_time": datetime(2026, 3, 2, 7, 15, 7)},  # naive
        {"received_at": datetime(2026, 3, 2, 9, 15, 9, tzinfo=timezone(timedelta(hours=2)))},
        {"device_tz": "Europe/Atlantis"},
        {"punch_state": 256},
        {"user_code": ""},
        {"device_serial": "S" * 65},
    ],
    ids=lambda change: next(iter(change)),
)
def test_raw_punch_refuses_invalid_fields(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RawPunch(**_fields(**change))


def test_decoding_an_aware_device_time_is_a_contract_error() -> None:
    data = json.loads(encode(punch()))
    data["device_time"] = "2026-03-02T08:15:07+01:00"
    with pytest.raises(ContractError) as caught:
        decode(RawPunch, json.dumps(data).encode())
    assert caught.value.reason == Reason.UNDECODABLE_EVENT
    assert "device_time" in caught.value.detail


def test_decoding_a_non_utc_punch_time_is_a_contract_error() -> None:
    data = json.loads(encode(punch()))
    data["punch_time"] = "2026-03-02T08:15:07+01:00"
    with pytest.raises(ContractError) as caught:
        decode(RawPunch, json.dumps(data).encode())
    assert caught.value.reason == Reason.UNDECODABLE_EVENT


GARBAGE = [
    b"",
    b"\xff\xfe\x00garbage\x80",
    b"not json at all",
    b"null",
    b"[1, 2, 3]",
    b'"a string"',
    b"{}",
    b'{"schema_version": 1}',
    b'{"schema_version": 0, "event_id": "x"}',  # no upgrade from a version that never existed
    b'{"schema_version": 99}',  # from the future
    b'{"schema_version": "1"}',
    b'{"schema_version": 1, "event_id": "bd5ba26c-8655-53ef-88c9-c6ce54507ab0"',  # cut short
]


@pytest.mark.parametrize("model", [CONTRACTS[name] for name in sorted(CONTRACTS)], ids=sorted(CONTRACTS))
@pytest.mark.parametrize("data", GARBAGE)
def test_decoding_garbage_raises_contract_error(model: type[BaseModel], data: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        decode(model, data)
    assert caught.value.reason == Reason.UNDECODABLE_EVENT
    assert caught.value.detail


def test_decode_rejects_one_contract_as_another() -> None:
    employee = (SCHEMAS / "examples" / "employee.v1.json").read_bytes()
    with pytest.raises(ContractError):
        decode(RawPunch, employee)
    with pytest.raises(ContractError):
        decode(QuarantineRecord, (SCHEMAS / "examples" / "raw_punch.v1.json").read_bytes())


def test_event_ids_are_uuids_on_the_wire() -> None:
    data = json.loads(encode(punch()))
    assert uuid.UUID(data["event_id"]) == punch().event_id
    assert data["device_time"] == "2026-03-02T08:15:07"  # naive: no zone on the wire
    assert data["punch_time"].endswith("Z")
