"""The write-first spool (durability, ack-prefix, threads) and the publisher's drain rounds."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from producers.publisher import Publisher, producer_config
from producers.spool import Spool
from tapstream.errors import SpoolError
from tapstream.settings import Settings


def records(n: int, start: int = 0, topic: str = "raw") -> list[tuple[str, bytes | None, bytes]]:
    return [(topic, b"dev-%d" % (i % 3), b"value-%d" % i) for i in range(start, start + n)]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool" / "push.sqlite3")


def test_append_peek_oldest_first(spool: Spool) -> None:
    spool.append(records(5))
    spool.append(records(3, start=5))
    rows = spool.peek(100)
    assert [r.value for r in rows] == [b"value-%d" % i for i in range(8)]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert rows[0].topic == "raw" and rows[0].key == b"dev-0"
    assert spool.peek(2) == rows[:2]
    assert spool.depth() == 8


def test_empty_append_is_a_no_op(spool: Spool) -> None:
    spool.append([])
    assert spool.depth() == 0 and spool.peek(10) == [] and spool.oldest_age_s() is None


def test_none_key_round_trips(spool: Spool) -> None:
    spool.append([("dlq", None, b"x")])
    assert spool.peek(1)[0].key is None


def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "push.sqlite3"
    first = Spool(path)
    first.append(records(10))
    first.ack(first.peek(4)[-1].id)
    # No close(): simulate a crash. The committed rows must be readable by a new process.
    reopened = Spool(path)
    assert reopened.depth() == 6
    assert [r.value for r in reopened.peek(100)] == [b"value-%d" % i for i in range(4, 10)]
    first.close()
    reopened.close()


def test_wal_and_full_sync(spool: Spool) -> None:
    db = sqlite3.connect(spool.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_ack_prefix(spool: Spool) -> None:
    spool.append(records(10))
    rows = spool.peek(10)
    assert spool.ack(rows[2].id) == 3
    assert spool.depth() == 7
    assert spool.peek(1)[0].id == rows[3].id
    assert spool.ack(rows[2].id) == 0  # acking again is harmless
    assert spool.ack(rows[-1].id) == 7 and spool.depth() == 0


def test_ids_never_reused_after_emptying(spool: Spool) -> None:
    spool.append(records(3))
    last = spool.peek(3)[-1].id
    spool.ack(last)
    spool.append(records(1))
    assert spool.peek(1)[0].id > last


def test_concurrent_append_and_drain(spool: Spool) -> None:
    writers, per_writer, batch = 4, 50, 7
    seen: list[bytes] = []
    done = threading.Event()

    def write(w: int) -> None:
        for b in range(per_writer):
            spool.append([("raw", b"w%d" % w, b"%d-%d-%d" % (w, b, i)) for i in range(batch)])

    def drain() -> None:
        while not done.is_set() or spool.depth():
            rows = spool.peek(64)
            if rows:
                seen.extend(r.value for r in rows)
                spool.ack(rows[-1].id)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader = threading.Thread(target=drain)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(30)
    assert len(seen) == len(set(seen)) == writers * per_writer * batch
    for w in range(writers):  # each writer's rows come out in the order it wrote them
        mine = [v for v in seen if v.startswith(b"%d-" % w)]
        assert mine == [b"%d-%d-%d" % (w, b, i) for b in range(per_writer) for i in range(batch)]


def test_closed_spool_raises(spool: Spool) -> None:
    spool.close()
    spool.close()
    with pytest.raises(SpoolError):
        spool.append(records(1))


def test_unwritable_location_raises_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError):
        Spool(blocker / "push.sqlite3")


def test_disk_error_on_append_raises_spool_error(spool: Spool) -> None:
    spool.append(records(1))
    spool._append_db.execute("PRAGMA query_only = ON")  # the file refuses writes from now on
    with pytest.raises(SpoolError):
        spool.append(records(1))
    assert spool.depth() == 1


def test_marks_commit_with_their_records_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "pull.sqlite3"
    first = Spool(path)
    assert first.mark("pull:A") is None
    first.append(records(3), marks={"pull:A": "3@x"})
    first.append([], marks={"pull:B": "0@"})  # a mark alone is a transaction too
    first.append(records(1), marks={"pull:A": "4@y"})
    reopened = Spool(path)  # no close(): as after a crash
    assert reopened.mark("pull:A") == "4@y" and reopened.mark("pull:B") == "0@"
    assert reopened.depth() == 4
    first.close()
    reopened.close()


def test_a_failed_append_moves_no_mark(spool: Spool) -> None:
    spool.append(records(1), marks={"pull:A": "1@a"})
    spool._append_db.execute("PRAGMA query_only = ON")
    with pytest.raises(SpoolError):
        spool.append(records(2), marks={"pull:A": "3@c"})
    spool._append_db.execute("PRAGMA query_only = OFF")
    assert spool.mark("pull:A") == "1@a" and spool.depth() == 1


# --- publisher rounds, with a fake producer ---------------------------------------------------------

class FakeError:
    def __init__(self, text: str) -> None:
        self.text = text

    def fatal(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.text


class FakeProducer:
    """Delivers on poll(). ``fail(value)`` makes a message fail; like an idempotent producer,
    later messages with the same key (same partition) fail too until the test clears
    ``failed_keys`` (the broker is back)."""

    def __init__(self, fail: Callable[[bytes], bool] = lambda value: False) -> None:
        self.fail = fail
        self.queue: list[tuple[bool, Callable[[Any, Any], None]]] = []
        self.failed_keys: set[bytes | None] = set()
        self.delivered: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        assert value is not None and on_delivery is not None
        failed = self.fail(value) or key in self.failed_keys
        if failed:
            self.failed_keys.add(key)
        else:
            self.delivered.append((topic, key, value))
        self.queue.append((failed, on_delivery))

    def poll(self, timeout: float) -> int:
        queued, self.queue = self.queue, []
        for failed, callback in queued:
            callback(FakeError("timed out") if failed else None, None)
        return len(queued)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def publisher(spool: Spool, producer: FakeProducer, batch: int = 100) -> Publisher:
    return Publisher(spool, Settings(), producer_factory=lambda config: producer, batch=batch)


def test_drain_publishes_in_order_and_acks(spool: Spool) -> None:
    spool.append(records(250))
    producer = FakeProducer()
    pub = publisher(spool, producer)
    assert pub.drain_once() == 100 and pub.drain_once() == 100 and pub.drain_once() == 50
    assert pub.drain_once() == 0
    assert [v for _, _, v in producer.delivered] == [b"value-%d" % i for i in range(250)]
    assert spool.depth() == 0 and pub.published == 250 and pub.failed_rounds == 0


def test_failure_acks_only_the_confirmed_prefix_then_resends(spool: Spool) -> None:
    spool.append(records(10))
    broken = {b"value-4"}
    producer = FakeProducer(fail=lambda value: value in broken)
    pub = publisher(spool, producer)
    assert pub.drain_once() == 4
    assert spool.depth() == 6 and pub.failed_rounds == 1 and "timed out" in str(pub.last_error)
    broken.clear()  # Kafka is back
    producer.failed_keys.clear()
    assert pub.drain_once() == 6 and spool.depth() == 0
    # Rows of other keys after the failure reached Kafka twice: duplicates, but for every key
    # the first occurrences keep the spool order.
    for key in {k for _, k, _ in producer.delivered}:
        values = [v for _, k, v in producer.delivered if k == key]
        expected = [b"value-%d" % i for i in range(10) if b"dev-%d" % (i % 3) == key]
        assert list(dict.fromkeys(values)) == expected
    assert len(producer.delivered) == 10 + 4  # value-5, 6, 8, 9 (keys dev-2, dev-0) twice


def test_synchronous_produce_error_stops_the_round(spool: Spool) -> None:
    spool.append(records(5))

    class Refusing(FakeProducer):
        def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                    on_delivery: Callable[[Any, Any], None] | None = None) -> None:
            if value == b"value-2":
                raise RuntimeError("message too large")
            super().produce(topic, value, key, on_delivery=on_delivery)

    producer = Refusing()
    pub = publisher(spool, producer)
    assert pub.drain_once() == 2
    assert [v for _, _, v in producer.delivered] == [b"value-0", b"value-1"]  # nothing after it
    assert spool.depth() == 3


def test_buffer_full_is_retried(spool: Spool) -> None:
    spool.append(records(3))

    class Full(FakeProducer):
        refusals = 2

        def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                    on_delivery: Callable[[Any, Any], None] | None = None) -> None:
            if self.refusals:
                self.refusals -= 1
                raise BufferError("queue full")
            super().produce(topic, value, key, on_delivery=on_delivery)

    pub = publisher(spool, Full())
    assert pub.drain_once() == 3 and spool.depth() == 0


def test_background_thread_drains_on_wake(spool: Spool) -> None:
    producer = FakeProducer()
    pub = Publisher(spool, Settings(), producer_factory=lambda config: producer, idle_tick_s=30)
    pub.start()
    try:
        spool.append(records(20))
        pub.wake()
        for _ in range(200):
            if spool.depth() == 0:
                break
            threading.Event().wait(0.01)
        assert spool.depth() == 0 and pub.published == 20
    finally:
        pub.stop(5)
    stats = pub.stats()
    assert stats["published"] == 20 and stats["spool_depth"] == 0


def test_rows_spooled_just_before_a_stop_are_published_by_it(spool: Spool) -> None:
    producer = FakeProducer()
    pub = Publisher(spool, Settings(), producer_factory=lambda config: producer, idle_tick_s=30)
    pub.start()
    spool.append(records(3))  # say, the devices' final "stopped" statuses: nobody wakes the thread
    pub.stop(5)
    assert spool.depth() == 0 and pub.published == 3


def test_a_stop_with_kafka_away_leaves_the_rows_spooled(spool: Spool) -> None:
    producer = FakeProducer(fail=lambda value: True)
    pub = Publisher(spool, Settings(), producer_factory=lambda config: producer, idle_tick_s=30)
    pub.start()
    spool.append(records(3))
    pub.stop(5)
    assert spool.depth() == 3 and pub.published == 0


def test_producer_config_is_idempotent_and_bounded() -> None:
    config = producer_config(Settings(), message_timeout_ms=5000)
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["message.timeout.ms"] == 5000 and config["compression.type"] in ("lz4", "zstd")
    assert config["bootstrap.servers"] == Settings().kafka.bootstrap
