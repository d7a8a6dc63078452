"""The emulator's HTTP control API, its foreground runner and the `tapstream emulate zk` options."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from emulator import runner
from emulator.control import make_app
from emulator.device import DeviceConfig
from emulator.fleet import Fleet
from schemas.punch import compute_event_id
from tapstream.cli import app as cli_app
from tapstream.errors import ConfigError

Client = TestClient[web.Request, web.Application]


def serve(scenario: Callable[[Client, Fleet], Awaitable[None]]) -> None:
    async def main() -> None:
        fleet = Fleet([DeviceConfig("CTL1", users=3, log_size=5), DeviceConfig("CTL2", capacity=1, on_full="stop")])
        await fleet.start()
        try:
            async with TestClient(TestServer(make_app(fleet))) as client:
                await scenario(client, fleet)
        finally:
            await fleet.stop()

    asyncio.run(main())


def test_stats_records_and_punch() -> None:
    async def scenario(client: Client, fleet: Fleet) -> None:
        stats = await (await client.get("/devices")).json()
        assert set(stats) == {"CTL1", "CTL2"} and stats["CTL1"]["log_records"] == 5
        assert stats["CTL1"]["port"] == fleet.port("CTL1") > 0
        one = await client.get("/devices/CTL1")
        assert (await one.json())["users"] == 3
        response = await client.post("/devices/CTL1/punch", json={"user_code": "1002", "state": 4})
        record = await response.json()
        assert response.status == 200 and (record["user_code"], record["state"], record["index"]) == ("1002", 4, 5)
        t = datetime.fromisoformat(record["device_time"])
        assert record["event_id"] == str(compute_event_id("CTL1", "1002", t, 4))
        assert (await client.post("/devices/CTL1/punch")).status == 200  # empty body: a random user
        records = await (await client.get("/devices/CTL1/records")).json()
        assert len(records) == 7 and records[5] == record
        assert [r["index"] for r in records] == list(range(7))
        assert (await client.post("/devices/CTL2/punch")).status == 200
        refused = await client.post("/devices/CTL2/punch")  # capacity 1, on_full=stop
        assert refused.status == 409 and "refused" in (await refused.json())["error"]
        await client.post("/devices/CTL2/reboot", json={"down_s": 0})
        assert len(await (await client.get("/devices/CTL2/records?generated=1")).json()) == 1

    serve(scenario)


def test_faults_reboot_and_rate() -> None:
    async def scenario(client: Client, fleet: Fleet) -> None:
        armed = await client.post("/devices/CTL1/faults", json={"kind": "stall", "on_command": 201, "skip": 1,
                                                                "count": 2, "duration_s": 0.5})
        assert armed.status == 200 and fleet.devices["CTL1"].faults.armed == 1
        reboot = await client.post("/devices/CTL1/reboot", json={"down_s": 0.2})
        assert reboot.status == 200 and fleet.devices["CTL1"].rebooting
        await asyncio.sleep(0.3)
        assert not fleet.devices["CTL1"].rebooting
        assert (await client.post("/rate", json={"rate_per_s": 2.5, "serial": "CTL2"})).status == 200
        assert fleet.devices["CTL2"].config.rate_per_s == 2.5 and fleet.devices["CTL1"].config.rate_per_s == 0
        assert (await client.post("/rate", json={"rate_per_s": 0})).status == 200
        assert fleet.devices["CTL2"].config.rate_per_s == 0

    serve(scenario)


@pytest.mark.parametrize("method, path, body, status", [
    ("get", "/devices/NOPE", None, 404),
    ("get", "/devices/NOPE/records", None, 404),
    ("post", "/devices/NOPE/punch", {}, 404),
    ("post", "/devices/NOPE/faults", {"kind": "drop"}, 404),
    ("post", "/devices/NOPE/reboot", {}, 404),
    ("post", "/rate", {"rate_per_s": 1, "serial": "NOPE"}, 404),
    ("post", "/devices/CTL1/faults", {"kind": "explode"}, 400),
    ("post", "/devices/CTL1/faults", {}, 400),
    ("post", "/devices/CTL1/faults", {"kind": "drop", "count": "two"}, 400),
    ("post", "/devices/CTL1/punch", {"state": "in"}, 400),
    ("post", "/devices/CTL1/punch", [1, 2], 400),
    ("post", "/devices/CTL1/reboot", {"down_s": -1}, 400),
    ("post", "/rate", {}, 400),
    ("post", "/rate", {"rate_per_s": -2}, 400),
])
def test_errors_are_json(method: str, path: str, body: object, status: int) -> None:
    async def scenario(client: Client, fleet: Fleet) -> None:
        call = getattr(client, method)
        response = await (call(path, json=body) if body is not None else call(path))
        assert response.status == status
        assert "error" in await response.json()

    serve(scenario)


def test_bad_json_body() -> None:
    async def scenario(client: Client, fleet: Fleet) -> None:
        response = await client.post("/devices/CTL1/punch", data=b"{not json")
        assert response.status == 400 and "not JSON" in (await response.json())["error"]

    serve(scenario)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_runner_serves_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    control_port = _free_port()

    async def main() -> None:
        fleet = Fleet([DeviceConfig("RUN1", rate_per_s=50.0)])
        stop = asyncio.Event()
        seen: dict[str, bytes] = {}

        async def started(fleet: Fleet) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", control_port)
            writer.write(b"GET /devices HTTP/1.0\r\n\r\n")
            seen["http"] = await reader.read()
            writer.close()
            await writer.wait_closed()
            asyncio.get_running_loop().call_later(0.3, stop.set)

        await runner.run(fleet, control_port=control_port, started=started, stop=stop, summary_every_s=0.1)
        assert b"RUN1" in seen["http"]
        assert fleet.devices["RUN1"].generated_count >= 3  # the ticker generated punches meanwhile

    with caplog.at_level(logging.INFO, logger="emulator.runner"):
        asyncio.run(main())
    assert any("punches=" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("args, message", [
    (["--record-format", "32"], "record_format"),
    (["--devices", "0"], "at least 1"),
    (["--timezone", "Mars/Base"], "timezone"),
    (["--base-port", "65535", "--devices", "2"], "do not fit"),
    (["--config", "/nonexistent/fleet.json"], "cannot read"),
    (["--control-port", "70000"], "control-port"),
])
def test_cli_rejects_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_app, ["emulate", "zk", *args])
    assert isinstance(result.exception, ConfigError), result.output
    assert message in str(result.exception)
