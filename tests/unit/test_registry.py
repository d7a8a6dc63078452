"""The device registry: lookups, refresh, last-good snapshot, and the add-device validation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from producers.registry import DeviceInfo, Registry, add_device
from tapstream.errors import ConfigError

DHAKA = DeviceInfo("A1", "Gate", "push", "Asia/Dhaka", "HQ", True)
BERLIN = DeviceInfo("B2", "Lobby", "push", "Europe/Berlin", "EU", False)


class Source:
    """A loader whose answer (devices or an outage) the test controls."""

    def __init__(self, *devices: DeviceInfo) -> None:
        self.devices = list(devices)
        self.down = False
        self.calls = 0

    def __call__(self) -> list[DeviceInfo]:
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return list(self.devices)


def test_lookup_after_refresh() -> None:
    registry = Registry(Source(DHAKA, BERLIN))
    assert registry.lookup("A1") is None and len(registry) == 0
    assert registry.refresh() is True
    assert registry.lookup("A1") == DHAKA and registry.lookup("B2") == BERLIN
    assert registry.lookup("nope") is None and len(registry) == 2 and registry.healthy


def test_outage_keeps_last_good_snapshot() -> None:
    source = Source(DHAKA)
    registry = Registry(source)
    registry.refresh()
    source.down = True
    assert registry.refresh() is False
    assert registry.lookup("A1") == DHAKA and not registry.healthy
    source.down, source.devices = False, [BERLIN]
    assert registry.refresh() is True
    assert registry.lookup("A1") is None and registry.lookup("B2") == BERLIN


def test_snapshot_file_lets_a_restart_work_without_the_database(tmp_path: Path) -> None:
    snapshot = tmp_path / "registry" / "devices.json"
    first = Registry(Source(DHAKA, BERLIN), snapshot_path=snapshot, refresh_s=3600)
    first.start()
    first.stop()
    assert json.loads(snapshot.read_text())[0]["serial"] == "A1"
    down = Source()
    down.down = True
    restarted = Registry(down, snapshot_path=snapshot, refresh_s=3600)
    restarted.start()
    try:
        assert down.calls == 1 and not restarted.healthy
        assert restarted.lookup("A1") == DHAKA and restarted.lookup("B2") == BERLIN
    finally:
        restarted.stop()


def test_corrupt_snapshot_is_ignored(tmp_path: Path) -> None:
    snapshot = tmp_path / "devices.json"
    snapshot.write_text("{not json")
    registry = Registry(Source(DHAKA), snapshot_path=snapshot, refresh_s=3600)
    registry.start()
    registry.stop()
    assert registry.lookup("A1") == DHAKA  # the refresh replaced it
    assert json.loads(snapshot.read_text())[0]["timezone"] == "Asia/Dhaka"


def test_background_refresh_picks_up_new_devices() -> None:
    source = Source(DHAKA)
    registry = Registry(source, refresh_s=0.01)
    registry.start()
    try:
        source.devices.append(BERLIN)
        for _ in range(500):
            if registry.lookup("B2"):
                break
            time.sleep(0.01)
        assert registry.lookup("B2") == BERLIN
    finally:
        registry.stop()


class NoDatabase:
    """add_device must reject bad input before touching the connection."""

    def execute(self, *args: Any) -> Any:
        raise AssertionError("validation should have failed first")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"serial": "", "kind": "push", "timezone": "UTC"}, "serial"),
        ({"serial": "X" * 65, "kind": "push", "timezone": "UTC"}, "serial"),
        ({"serial": "X1", "kind": "cloud", "timezone": "UTC"}, "kind"),
        ({"serial": "X1", "kind": "push", "timezone": "Asia/Dacca_City"}, "IANA"),
        ({"serial": "X1", "kind": "pull", "timezone": "UTC"}, "address"),
        ({"serial": "X1", "kind": "pull", "timezone": "UTC", "address": "10.0.0.9", "transport": "ssh"}, "tcp or udp"),
        ({"serial": "X1", "kind": "pull", "timezone": "UTC", "address": "10.0.0.9", "port": 70000}, "port"),
        ({"serial": "X1", "kind": "pull", "timezone": "UTC", "address": "10.0.0.9", "comm_key": -1}, "comm key"),
    ],
)
def test_add_device_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        add_device(NoDatabase(), **kwargs)  # type: ignore[arg-type]  # a fake connection


def test_snapshots_written_before_pull_fields_existed_still_load(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    path.write_text(json.dumps([{"serial": "A1", "name": "Gate", "kind": "push", "timezone": "Asia/Dhaka",
                                 "site": "HQ", "enabled": True}]))
    registry = Registry(Source(), snapshot_path=path)
    registry._devices = registry._read_snapshot()
    assert registry.lookup("A1") == DHAKA
    assert DHAKA.pull_port == 4370 and DHAKA.transport == "tcp" and DHAKA.comm_key == 0


def test_pull_fields_round_trip_through_the_snapshot(tmp_path: Path) -> None:
    gate = DeviceInfo("P1", "Gate", "pull", "UTC", "HQ", True, "10.0.0.9", 4371, 123456, "udp")
    path = tmp_path / "devices.json"
    first = Registry(Source(gate), snapshot_path=path)
    first.refresh()
    second = Registry(Source(), snapshot_path=path)
    second._devices = second._read_snapshot()
    assert second.devices() == {"P1": gate} and gate.pull_port == 4371
