"""The quarantine against the real Postgres and Kafka: DLQ messages projected, listed, replayed.

One fresh schema and raw topic per test; the CLI runs as an operator runs it, in a subprocess
configured through TAPSTREAM_* variables.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import struct
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from emulator.protocol import encode_time
from infra.quarantine import REPLAY_HEADER, OutMessage, Selection, replay
from schemas.codec import decode, encode
from schemas.punch import PunchSource, RawPunch, make_raw_punch
from schemas.quarantine import Reason, Stage, quarantine
from sinks.postgres_quarantine import DlqMessage, write_quarantine
from tapstream.settings import PostgresSettings, Settings, TopicSettings

if TYPE_CHECKING:
    from conftest import PgSchema

Cli = Callable[..., subprocess.CompletedProcess[str]]
PUSH_DEVICE, STRANGER, PULL_DEVICE = "QPUSH0001", "QSTRANGER", "QPULL0001"
AT = datetime.now(UTC).replace(microsecond=0)
LINE = b"1001\t2026-03-01 08:00:00\t0\t15"


def stream_punch(when: datetime) -> RawPunch:
    return make_raw_punch(
        device_serial=PUSH_DEVICE, user_code="1002", device_time=when, device_tz="Asia/Dhaka", punch_state=1,
        verify_mode=1, source=PunchSource.PUSH, raw="1002\t...", received_at=AT,
    )


SINK_REJECTED = encode(stream_punch(datetime(2026, 3, 1, 17, 0)))
PULL_RECORD = struct.pack("<H24sBIB8x", 3, b"1003", 1, encode_time(datetime(2026, 3, 1, 9, 0)), 0)


def dlq_messages() -> list[DlqMessage]:
    def record(reason: Reason, stage: Stage, original: bytes, serial: str | None) -> bytes:
        return encode(quarantine(reason, f"{reason.value} in a test", stage, original, device_serial=serial, now=AT))

    return [
        DlqMessage(0, 10, PUSH_DEVICE.encode(), record(Reason.UNKNOWN_DEVICE, Stage.PUSH, LINE, PUSH_DEVICE)),
        DlqMessage(0, 11, STRANGER.encode(), record(Reason.UNKNOWN_DEVICE, Stage.PUSH, LINE, STRANGER)),
        DlqMessage(1, 20, PUSH_DEVICE.encode(), record(Reason.SINK_REJECTED, Stage.STREAM, SINK_REJECTED, PUSH_DEVICE)),
        DlqMessage(1, 21, b"QJUNK", b"\x00 not a quarantine record"),
        DlqMessage(1, 22, PUSH_DEVICE.encode(),
                   record(Reason.IMPLAUSIBLE_TIME, Stage.STREAM, encode(stream_punch(datetime(2004, 1, 1, 8, 0))), PUSH_DEVICE)),
        DlqMessage(1, 23, PULL_DEVICE.encode(), record(Reason.BAD_FIELD, Stage.PULL, PULL_RECORD, PULL_DEVICE)),
    ]


def write_all(dsn: str, messages: list[DlqMessage]) -> int:
    with psycopg.connect(dsn) as conn, conn.transaction(), conn.cursor() as cur:
        return write_quarantine(cur, messages)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def read_all(bootstrap: str, topic: str, group: str) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[Any] = []
        while len(out) < sum(ends.values()):
            msg = consumer.poll(10)
            assert msg is not None and msg.error() is None, "raw topic read timed out"
            out.append(msg)
        return out
    finally:
        consumer.close()


def replayed(dsn: str) -> dict[str, str | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT dlq_partition, dlq_offset, replay_note FROM quarantine WHERE replayed_at IS NOT NULL")
        return {f"{p}:{o}": note for p, o, note in rows}


@pytest.fixture
def env(pg_schema: PgSchema, kafka_bootstrap: str, fresh_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the CLI at this test's schema and a fresh raw topic; return the topic."""
    raw = fresh_topic(2, prefix="quarantine.raw")
    monkeypatch.setenv("TAPSTREAM_POSTGRES__DSN", pg_schema.dsn)
    monkeypatch.setenv("TAPSTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("TAPSTREAM_TOPICS__RAW", raw)
    return raw


def test_dead_letters_are_projected_once_and_listed_in_every_format(env: str, pg_schema: PgSchema, tapstream_cli: Cli) -> None:
    assert write_all(pg_schema.dsn, dlq_messages()) == 6
    assert write_all(pg_schema.dsn, dlq_messages()) == 0  # the same messages again: nothing new

    rows = json.loads(ok(tapstream_cli("quarantine", "list", "--format", "json")))
    assert [r["id"] for r in sorted(rows, key=lambda r: r["id"])] == ["0:10", "0:11", "1:20", "1:21", "1:22", "1:23"]
    junk = next(r for r in rows if r["id"] == "1:21")
    assert (junk["reason"], junk["stage"], junk["device_serial"]) == ("undecodable_event", "stream", "QJUNK")
    assert base64.b64decode(junk["original"]) == b"\x00 not a quarantine record" and "not JSON" in junk["detail"]

    table = list(csv.DictReader(io.StringIO(ok(tapstream_cli("quarantine", "list", "--format", "csv")))))
    assert len(table) == 6 and set(table[0]) >= {"id", "reason", "original", "quarantined_at", "replay_note"}
    assert {base64.b64decode(r["original"]) for r in table if r["id"] == "0:10"} == {LINE}

    text = ok(tapstream_cli("quarantine", "list", "--reason", "unknown_device"))
    assert text.splitlines()[0].split()[:3] == ["id", "when", "(UTC)"]
    assert "0:10" in text and "0:11" in text and "1:20" not in text
    assert len(json.loads(ok(tapstream_cli("quarantine", "list", "--device", STRANGER, "--format", "json")))) == 1
    assert json.loads(ok(tapstream_cli("quarantine", "list", "--since", "1h", "--stage", "pull", "--format", "json")))[0]["id"] == "1:23"

    typo = tapstream_cli("quarantine", "list", "--reason", "unknown-device")
    assert typo.returncode == 1 and typo.stderr.count("\n") == 1 and "unknown reason" in typo.stderr


def test_replay_sends_what_is_fixed_reports_the_rest_and_never_sends_twice(
    env: str, pg_schema: PgSchema, kafka_bootstrap: str, fresh_group: str, tapstream_cli: Cli
) -> None:
    write_all(pg_schema.dsn, dlq_messages())
    ok(tapstream_cli("devices", "add", PUSH_DEVICE, "--kind", "push", "--timezone", "Asia/Dhaka"))
    ok(tapstream_cli("devices", "add", PULL_DEVICE, "--kind", "pull", "--timezone", "Asia/Dhaka", "--address", "10.0.0.9"))

    dry = json.loads(ok(tapstream_cli("quarantine", "replay", "--dry-run", "--json")))
    assert {o["id"]: o["status"] for o in dry["outcomes"]}["0:10"] == "would_send"
    assert replayed(pg_schema.dsn) == {} and read_all(kafka_bootstrap, env, fresh_group) == []

    first = ok(tapstream_cli("quarantine", "replay"))
    status = {line.split()[1]: line.split()[0] for line in first.splitlines()[:-1]}
    assert status == {"0:10": "sent", "1:20": "sent", "1:23": "sent", "0:11": "skipped", "1:21": "skipped", "1:22": "skipped"}
    assert "unknown_device: device not in the registry" in first
    assert "implausible_time" in first and "still not a valid punch" in first
    assert first.splitlines()[-1] == "replay: 3 sent, 3 skipped, 0 failed"

    messages = {m.headers()[0][1].decode(): m for m in read_all(kafka_bootstrap, env, fresh_group)}
    assert set(messages) == {"dlq:0:10", "dlq:1:20", "dlq:1:23"}
    assert all(m.headers()[0][0] == "tapstream-replayed-from" for m in messages.values())
    assert messages["dlq:1:20"].value() == SINK_REJECTED and messages["dlq:1:20"].key() == PUSH_DEVICE.encode()
    pushed = decode(RawPunch, messages["dlq:0:10"].value())
    assert (messages["dlq:0:10"].key(), pushed.user_code, pushed.device_tz, pushed.raw) == (
        PUSH_DEVICE.encode(), "1001", "Asia/Dhaka", LINE.decode())
    pulled = decode(RawPunch, messages["dlq:1:23"].value())
    assert (messages["dlq:1:23"].key(), pulled.user_code, pulled.source, pulled.raw) == (
        PULL_DEVICE.encode(), "1003", PunchSource.PULL_POLL, PULL_RECORD.hex())
    assert replayed(pg_schema.dsn) == {i: f"sent 1 punch to {env}" for i in ("0:10", "1:20", "1:23")}

    again = ok(tapstream_cli("quarantine", "replay"))
    assert again.splitlines()[-1] == "replay: 0 sent, 3 skipped, 0 failed"
    explicit = ok(tapstream_cli("quarantine", "replay", "--id", "0:10", "--id", "9:9"))
    assert "already replayed" in explicit and "no quarantine record with this id" in explicit
    assert len(read_all(kafka_bootstrap, env, fresh_group + "-again")) == 3
    assert len(json.loads(ok(tapstream_cli("quarantine", "list", "--format", "json")))) == 3
    assert len(json.loads(ok(tapstream_cli("quarantine", "list", "--all", "--format", "json")))) == 6


class HalfBrokenSender:
    """Confirms the first message of every send and fails the rest, as a broker going away would."""

    def __init__(self) -> None:
        self.sent: list[OutMessage] = []

    def send(self, topic: str, messages: Sequence[OutMessage]) -> list[str | None]:
        self.sent += messages
        return [None] + ["Local: Message timed out"] * (len(messages) - 1)


def test_a_record_kafka_did_not_confirm_stays_un_replayed(env: str, pg_schema: PgSchema, tapstream_cli: Cli) -> None:
    write_all(pg_schema.dsn, dlq_messages())
    ok(tapstream_cli("devices", "add", PUSH_DEVICE, "--kind", "push", "--timezone", "Asia/Dhaka"))
    settings = Settings(postgres=PostgresSettings(dsn=SecretStr(pg_schema.dsn)), topics=TopicSettings(raw=env))
    sender = HalfBrokenSender()

    report = replay(settings, Selection(limit=None), sender=sender)

    assert [m.headers for m in sender.sent] == [{REPLAY_HEADER: b"dlq:0:10"}, {REPLAY_HEADER: b"dlq:1:20"}]
    assert {o.id: o.status for o in report.outcomes if o.status != "skipped"} == {"0:10": "sent", "1:20": "failed"}
    assert "Message timed out" in next(o.note for o in report.outcomes if o.id == "1:20")
    assert set(replayed(pg_schema.dsn)) == {"0:10"}
