"""The iclock endpoint over real HTTP (aiohttp test server), a real tmp spool, a fake publisher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from producers import adms
from producers.push_server import QUARANTINE_HEAD_BYTES, make_app
from producers.registry import DeviceInfo, Registry
from producers.spool import Spool
from schemas.codec import decode
from schemas.punch import RawPunch
from schemas.quarantine import QuarantineRecord, Reason
from tapstream.settings import Settings

SERIAL = "BOCK200961014"
E9_BODY = (
    b"1\t2024-07-28 01:25:24\t0\t1\t\t0\t0\t\r\n"
    b"1\t2024-07-28 10:41:21\t0\t1\t\t0\t0\t\r\n"
    b"4\t2024-07-28 10:41:31\t0\t1\t\t0\t0\t\r\n"
)
DEVICES = [
    DeviceInfo(SERIAL, "Gate", "push", "Asia/Dhaka", "HQ", True),
    DeviceInfo("OFF1", "Old", "push", "Asia/Dhaka", "HQ", False),
    DeviceInfo("NOZONE", "New", "push", "", "HQ", True),
]


class FakePublisher:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    def stats(self) -> dict[str, object]:
        return {"published": 0, "wakes": self.wakes}


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(state_dir=tmp_path)
        self.settings.push.max_body_bytes = 100_000
        self.settings.devices.default_timezone = "Europe/Berlin"
        self.spool = Spool(tmp_path / "spool" / "push.sqlite3")
        self.registry = Registry(lambda: DEVICES)
        self.registry.refresh()
        self.publisher = FakePublisher()

    def rows(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        return [(r.key, r.value) for r in self.spool.peek(10_000) if r.topic == topic]

    def punches(self) -> list[RawPunch]:
        return [decode(RawPunch, value) for _, value in self.rows(self.settings.topics.raw)]

    def quarantined(self) -> list[QuarantineRecord]:
        return [decode(QuarantineRecord, value) for _, value in self.rows(self.settings.topics.dlq)]


Client = TestClient[web.Request, web.Application]
Scenario = Callable[[Client, Env], Awaitable[None]]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def serve(env: Env, scenario: Scenario) -> None:
    async def main() -> None:
        app = make_app(env.settings, env.spool, env.registry, env.publisher)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, env)

    asyncio.run(main())


async def post(client: Client, query: str, body: bytes | AsyncIterator[bytes]) -> tuple[int, str]:
    response = await client.post(f"/iclock/cdata?{query}", data=body)
    return response.status, await response.text()


def test_handshake_known_device(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        response = await client.get(f"/iclock/cdata?SN={SERIAL}&options=all&pushver=2.4.0&language=69")
        body = await response.text()
        assert response.status == 200
        assert body.splitlines()[0] == f"GET OPTION FROM: {SERIAL}"
        assert "TimeZone=6" in body.splitlines() and "Realtime=1" in body.splitlines()
        assert response.headers["Content-Type"] == "text/plain"
        assert int(response.headers["Content-Length"]) == len(body.encode())
        sent = parsedate_to_datetime(response.headers["Date"])
        assert abs((sent - datetime.now(UTC)).total_seconds()) < 5
        assert response.headers["Date"].endswith("GMT")

    serve(env, scenario)


def test_handshake_zone_defaults_and_unknown_devices(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(client: Client, env: Env) -> None:
        no_zone = await (await client.get("/iclock/cdata?SN=NOZONE&options=all")).text()
        assert any(line.startswith("TimeZone=") for line in no_zone.splitlines())  # the default zone
        for _ in range(3):
            response = await client.get("/iclock/cdata?SN=STRANGER1&options=all")
            body = await response.text()
            assert response.status == 200 and body.startswith("GET OPTION FROM: STRANGER1\n")
            assert "TimeZone" not in body  # do not move the clock of a device we know nothing about

    with caplog.at_level(logging.WARNING):
        serve(env, scenario)
    assert sum("STRANGER1" in r.getMessage() for r in caplog.records) == 1  # warned once


def test_attlog_is_spooled_and_answered_with_the_count(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        assert await post(client, f"SN={SERIAL}&table=ATTLOG&Stamp=9999", E9_BODY) == (200, "OK: 3")

    serve(env, scenario)
    punches = env.punches()
    assert [p.user_code for p in punches] == ["1", "1", "4"]
    assert all(key == SERIAL.encode() for key, _ in env.rows(env.settings.topics.raw))
    assert punches[0].device_tz == "Asia/Dhaka" and env.publisher.wakes == 1


def test_same_batch_twice_gives_the_same_event_ids(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        for _ in range(2):
            assert await post(client, f"SN={SERIAL}&table=ATTLOG", E9_BODY) == (200, "OK: 3")

    serve(env, scenario)
    ids = [p.event_id for p in env.punches()]
    assert len(ids) == 6 and ids[:3] == ids[3:] and len(set(ids)) == 3


def test_bad_lines_are_quarantined_and_counted(env: Env) -> None:
    body = E9_BODY + b"\xff\xfe\x00junk\n1\tyesterday\t0\t1\n\n\x00\x01\x02\n"

    async def scenario(client: Client, env: Env) -> None:
        assert await post(client, f"SN={SERIAL}&table=ATTLOG", body) == (200, "OK: 6")

    serve(env, scenario)
    assert len(env.punches()) == 3
    records = env.quarantined()
    assert [r.reason for r in records] == [Reason.NOT_TEXT, Reason.BAD_TIMESTAMP, Reason.NOT_TEXT]
    assert records[0].original() == b"\xff\xfe\x00junk" and records[0].device_serial == SERIAL
    assert all(key == SERIAL.encode() for key, _ in env.rows(env.settings.topics.dlq))


def test_random_binary_body_never_breaks_the_endpoint(env: Env) -> None:
    import random

    rng = random.Random(7)

    async def scenario(client: Client, env: Env) -> None:
        for _ in range(20):
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 4000)))
            status, text = await post(client, f"SN={SERIAL}&table=ATTLOG", body)
            assert status == 200 and text == f"OK: {adms.count_lines(body)}"

    serve(env, scenario)


@pytest.mark.parametrize("serial", ["STRANGER1", "OFF1"])
def test_unknown_or_disabled_device_goes_to_the_dlq(env: Env, serial: str) -> None:
    async def scenario(client: Client, env: Env) -> None:
        assert await post(client, f"SN={serial}&table=ATTLOG", E9_BODY) == (200, "OK: 3")

    serve(env, scenario)
    assert env.punches() == []
    records = env.quarantined()
    assert [r.reason for r in records] == [Reason.UNKNOWN_DEVICE] * 3
    assert records[0].original() == b"1\t2024-07-28 01:25:24\t0\t1\t\t0\t0\t"
    assert records[0].device_serial == serial


def test_unknown_table_is_quarantined_whole(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        assert await post(client, f"SN={SERIAL}&table=FOO", b"a\tb\nc\td\n") == (200, "OK")

    serve(env, scenario)
    (record,) = env.quarantined()
    assert record.reason is Reason.UNKNOWN_TABLE and record.original() == b"a\tb\nc\td\n"
    assert "FOO" in record.detail


def test_acknowledged_tables(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        operlog = b"OPLOG 4\t14\t2015-07-30 10:22:34\t0\t0\t0\t0\nUSER PIN=1\tName=A\n"
        assert await post(client, f"SN={SERIAL}&table=OPERLOG&Stamp=9999", operlog) == (200, "OK: 2")
        assert await post(client, f"SN={SERIAL}&table=options", b"FingerFunOn=1,FaceFunOn=1") == (200, "OK")
        photo = b"PIN=1.jpg\nSN=X\nsize=4\nCMD=uploadphoto\x00\xff\xd8\xff\xe0"
        assert await post(client, f"SN={SERIAL}&table=ATTPHOTO", photo) == (200, "OK")
        rtlog = b"time=2024-05-01 09:00:00\tpin=7\tinoutstatus=1\tverifytype=15\n"
        assert await post(client, f"SN={SERIAL}&table=rtlog", rtlog) == (200, "OK")

    serve(env, scenario)
    assert [p.user_code for p in env.punches()] == ["7"] and env.quarantined() == []


def test_body_over_the_limit_is_refused_with_413(env: Env) -> None:
    body = b"1\t2024-07-28 01:25:24\t0\t1\n" * 12_000  # 300 kB against a 100 kB limit

    async def scenario(client: Client, env: Env) -> None:
        status, text = await post(client, f"SN={SERIAL}&table=ATTLOG", body)
        assert status == 413
        assert text == f"FAIL: body of {len(body)} bytes exceeds the 100000-byte limit"

    serve(env, scenario)
    (record,) = env.quarantined()
    assert record.reason is Reason.BODY_TOO_LARGE and record.original_size == len(body)
    assert record.original() == body[:QUARANTINE_HEAD_BYTES]
    assert env.punches() == []


def test_chunked_body_over_the_limit(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"x" * 10_000

    async def scenario(client: Client, env: Env) -> None:
        status, text = await post(client, f"SN={SERIAL}&table=ATTLOG", chunks())
        assert status == 413 and "300000 bytes" in text

    serve(env, scenario)
    (record,) = env.quarantined()
    assert record.original_size == 300_000 and len(record.original()) == QUARANTINE_HEAD_BYTES


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/iclock/cdata?table=ATTLOG", "missing SN"),
        ("/iclock/cdata?SN=&table=ATTLOG", "missing SN"),
        ("/iclock/getrequest", "missing SN"),
        ("/iclock/cdata?SN=a%20b&table=ATTLOG", "not a valid serial"),
    ],
)
def test_requests_without_a_serial_get_400(env: Env, path: str, fragment: str) -> None:
    async def scenario(client: Client, env: Env) -> None:
        response = await client.post(path, data=E9_BODY)
        assert response.status == 400 and fragment in await response.text()
        assert response.headers["Content-Type"] == "text/plain" and "Date" in response.headers

    serve(env, scenario)
    assert env.spool.depth() == 0


def test_polls_commands_and_unknown_paths(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        info = "INFO=Ver%202.0.12-20150625,0,0,0,192.168.16.27,10,7,15,0,111"
        for method, path, body in [
            ("GET", f"/iclock/getrequest?SN={SERIAL}&{info}", b""),
            ("GET", f"/iclock/ping?SN={SERIAL}", b""),
            ("POST", f"/iclock/devicecmd?SN={SERIAL}", b"ID=info8487&Return=0&CMD=DATA\nID=fp1&Return=0&CMD=DATA\n"),
            ("POST", f"/iclock/registry?SN={SERIAL}", b"DeviceType=acc,~DeviceName=SpeedFace"),
            ("GET", "/iclock/somethingnew", b""),
            ("POST", f"/iclock/getrequest?SN={SERIAL}", b""),
            ("GET", f"/iclock/cdata?SN={SERIAL}&table=RemoteAtt&PIN=1", b""),
        ]:
            response = await client.request(method, path, data=body)
            assert (response.status, await response.text()) == (200, "OK"), path
            assert "Date" in response.headers

    serve(env, scenario)


def test_spool_failure_answers_503(env: Env) -> None:
    env.spool.close()

    async def scenario(client: Client, env: Env) -> None:
        status, text = await post(client, f"SN={SERIAL}&table=ATTLOG", E9_BODY)
        assert status == 503 and text.startswith("FAIL")
        assert await post(client, f"SN={SERIAL}&table=OPERLOG", b"OPLOG 1\n") == (200, "OK: 1")  # nothing to spool

    serve(env, scenario)


def test_unexpected_storage_error_answers_500(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(records: object) -> None:
        raise RuntimeError("disk gremlin")

    monkeypatch.setattr(env.spool, "append", broken)

    async def scenario(client: Client, env: Env) -> None:
        status, text = await post(client, f"SN={SERIAL}&table=ATTLOG", E9_BODY)
        assert status == 500 and text.startswith("FAIL")  # the device keeps its batch

    serve(env, scenario)


def test_parser_bug_quarantines_the_body(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> adms.ParsedBatch:
        raise RuntimeError("boom")

    monkeypatch.setattr(adms, "parse_attlog", broken)

    async def scenario(client: Client, env: Env) -> None:
        assert await post(client, f"SN={SERIAL}&table=ATTLOG", E9_BODY) == (200, "OK: 3")

    serve(env, scenario)
    (record,) = env.quarantined()
    assert record.reason is Reason.MALFORMED_LINE and "boom" in record.detail and record.original() == E9_BODY


def test_healthz_reports_counters(env: Env) -> None:
    async def scenario(client: Client, env: Env) -> None:
        await post(client, f"SN={SERIAL}&table=ATTLOG", E9_BODY)
        await client.get(f"/iclock/getrequest?SN={SERIAL}")
        health = await (await client.get("/healthz")).json()
        assert health["spool_depth"] == 3 and health["registry"] == {"devices": 3, "healthy": True}
        assert health["tables"] == {"ATTLOG": 1}
        assert health["devices"][SERIAL] == {"uploads": 1, "punches": 3, "quarantined": 0, "polls": 1}
        assert health["publisher"]["wakes"] == 1 and health["spool_oldest_age_s"] >= 0

    serve(env, scenario)
