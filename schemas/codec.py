"""Encode and decode contract events as JSON bytes, upgrading older versions on the way in.

Every contract has a ``schema_version``. A decoder reads any version it has ever written:
``_UPGRADES[model][v]`` turns a version-``v`` dict into version ``v + 1``. When a contract
changes, bump its version, add the upgrade here, and freeze an example of the old version in
``schemas/examples/`` (the contract tests decode every frozen example).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.alert import Alert
from schemas.device_status import DeviceStatus
from schemas.employee import EmployeeRecord
from schemas.live import LivePunch
from schemas.punch import RawPunch
from schemas.quarantine import QuarantineRecord, Reason
from tapstream.errors import ContractError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]

# model -> {from_version: upgrade to from_version + 1}. Empty while every contract is at v1.
_UPGRADES: dict[type[BaseModel], dict[int, Upgrade]] = {
    RawPunch: {},
    QuarantineRecord: {},
    EmployeeRecord: {},
    DeviceStatus: {},
    LivePunch: {},
    Alert: {},
}

CONTRACTS: dict[str, type[BaseModel]] = {
    "raw_punch": RawPunch,
    "quarantine": QuarantineRecord,
    "employee": EmployeeRecord,
    "device_status": DeviceStatus,
    "live_punch": LivePunch,
    "alert": Alert,
}


def encode(event: BaseModel) -> bytes:
    """Serialise an event to compact JSON bytes."""
    return event.model_dump_json().encode("utf-8")


def current_version(model: type[BaseModel]) -> int:
    default = model.model_fields["schema_version"].default
    assert isinstance(default, int)
    return default


def decode(model: type[M], data: bytes) -> M:
    """Decode JSON bytes into ``model``, upgrading older versions; raise ContractError if invalid."""
    try:
        # Fast path: the current version validates straight from bytes.
        return model.model_validate_json(data)
    except ValidationError as fast_error:
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(Reason.UNDECODABLE_EVENT, f"not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ContractError(Reason.UNDECODABLE_EVENT, "JSON value is not an object") from None
        upgraded = _upgrade(model, raw)
        if upgraded is raw:
            raise ContractError(Reason.UNDECODABLE_EVENT, _summary(fast_error)) from fast_error
        try:
            return model.model_validate(upgraded)
        except ValidationError as exc:
            raise ContractError(Reason.UNDECODABLE_EVENT, _summary(exc)) from exc


def decode_or_none(model: type[M], data: bytes | None, where: str) -> M | None:
    """Decode ``data``; None for a tombstone, and for a record that is not ``model`` (logged
    with ``where``, e.g. the topic and offset, so a bad record is skipped with a trace)."""
    if data is None:
        return None
    try:
        return decode(model, data)
    except ContractError as exc:
        logger.warning("%s: skipped a record that is not a %s: %s", where, model.__name__, exc)
        return None


def _upgrade(model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    version = raw.get("schema_version")
    target = current_version(model)
    if not isinstance(version, int) or version >= target:
        return raw
    steps = _UPGRADES[model]
    out = raw
    while version < target:
        if version not in steps:
            raise ContractError(Reason.UNDECODABLE_EVENT, f"no upgrade from version {version}")
        out = steps[version](dict(out))
        version += 1
    return out


def _summary(error: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5]]
    return "; ".join(parts)


def export_json_schemas(folder: Path) -> list[Path]:
    """Write ``<name>.v<version>.json`` JSON Schemas for every contract; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in CONTRACTS.items():
        path = folder / f"{name}.v{current_version(model)}.json"
        schema = model.model_json_schema()
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
