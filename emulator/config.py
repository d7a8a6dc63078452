"""Device lists for the emulator: numbered devices from options, or a JSON config file.

File format::

    {"defaults": {...DeviceConfig fields...},
     "devices": [{"serial": "GATE-1", ...overrides}, ...]}

A device gets its fields from (highest first) its own entry, the file's defaults, the command
line's options, then DeviceConfig's defaults. A device without a port anywhere gets
``base_port + its position``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emulator.device import DeviceConfig

FIELDS = {f.name: f for f in dataclasses.fields(DeviceConfig)}


def numbered(count: int, *, base_port: int, prefix: str = "EMU", **options: Any) -> list[DeviceConfig]:
    """``count`` devices EMU0001, EMU0002 ... on ports base_port, base_port + 1, ..."""
    if count < 1:
        raise ValueError("--devices must be at least 1")
    if not 0 < base_port or base_port + count - 1 > 65535:
        raise ValueError(f"ports {base_port}..{base_port + count - 1} do not fit in 1-65535")
    width = max(4, len(str(count)))
    return [
        make_config({**options, "serial": f"{prefix}{i + 1:0{width}d}", "port": base_port + i}, where="options")
        for i in range(count)
    ]


def from_file(path: Path, *, base_port: int, **options: Any) -> list[DeviceConfig]:
    """The devices a JSON config file defines (ValueError with the reason when it is invalid)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list) or not doc["devices"]:
        raise ValueError(f'{path}: expected {{"defaults": {{...}}, "devices": [{{"serial": ...}}, ...]}}')
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ValueError(f"{path}: defaults must be an object")
    unknown_top = set(doc) - {"defaults", "devices"}
    if unknown_top:
        raise ValueError(f"{path}: unknown keys {sorted(unknown_top)}")
    configs = []
    for i, entry in enumerate(doc["devices"]):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: devices[{i}] must be an object")
        merged = {"port": base_port + i, **options, **defaults, **entry}
        configs.append(make_config(merged, where=f"{path}: devices[{i}]"))
    return configs


def make_config(values: Mapping[str, Any], *, where: str) -> DeviceConfig:
    """Build a DeviceConfig from loose values; ValueError naming ``where`` and the bad field."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)} (known: {', '.join(FIELDS)})")
    if "serial" not in values:
        raise ValueError(f"{where}: serial is required")
    for name, value in values.items():
        _check_type(name, value, where)
    try:
        return DeviceConfig(**values)
    except ValueError as exc:  # already names the device
        raise ValueError(str(exc) if where == "options" else f"{where}: {exc}") from exc


def _check_type(name: str, value: Any, where: str) -> None:
    expected = FIELDS[name].type  # a string under `from __future__ import annotations`
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }.get(str(expected), True)
    if not ok:
        raise ValueError(f"{where}: {name} must be {expected}, not {value!r}")
