"""Drive the pipeline from outside: run `tapstream` processes and wait on what they report.

Shared by `tapstream demo` and the end-to-end tests. Nothing here opens the embedded
ClickHouse store: a worker owns it while it runs, so progress is read from the worker's stats
file (streams.stats), the push endpoint's /healthz and Kafka offsets instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.catchup import start_positions
from streams.stats import read_stats
from tapstream.errors import TapstreamError


class TapstreamProcess:
    """A `tapstream <args>` subprocess with its output in ``log``; SIGTERM-stopped on exit.

    ``env`` is the whole environment of the child (default: this process's environment).
    """

    def __init__(
        self, args: list[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._out = log.open("wb")
        cmd = [sys.executable, "-m", "tapstream", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, env=dict(env if env is not None else os.environ), cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, wait up to ``timeout_s`` seconds, then SIGKILL; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush, ack or commit anything."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._out.close()

    def __enter__(self) -> TapstreamProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float) -> dict[str, Any]:
    """GET ``url`` until it answers (JSON), for at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            if time.monotonic() > deadline:
                raise TapstreamError(f"{url} did not answer within {timeout_s:.0f}s") from None
            time.sleep(0.3)


def wait_drained(base: str, timeout_s: float) -> None:
    """Wait until the push endpoint at ``base`` has published its whole spool to Kafka."""
    deadline = time.monotonic() + timeout_s
    while wait_http(base + "/healthz", 5)["spool_depth"] > 0:
        if time.monotonic() > deadline:
            raise TapstreamError("the push spool did not drain into Kafka")
        time.sleep(0.2)


def worker_stats(stats_file: Path, pid: int) -> dict[str, Any]:
    """The counters of worker ``pid`` ({} until it has written its own: the file may be stale)."""
    stats = read_stats(stats_file) or {}
    return stats if stats.get("pid") == pid else {}


def pull_devices(status_file: Path, pid: int) -> dict[str, Any] | None:
    """Device statuses from `tapstream pull` process ``pid``'s status file (None until it wrote one)."""
    try:
        document = json.loads(status_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if document.get("pid") != pid:
        return None  # a file left by an earlier process
    devices: dict[str, Any] = document["devices"]
    return devices


def wait_worker(stats_file: Path, worker: TapstreamProcess, events: int, timeout_s: float) -> dict[str, Any]:
    """Wait until ``worker`` has flushed ``events`` events (stored, parked or dropped); its stats.

    Counts flushed events, not the time of the last flush: events consumed while a slow batch
    was being written are still buffered when that batch's flush time is recorded.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        stats = worker_stats(stats_file, worker.pid)
        if stats.get("flushed", 0) >= events:
            return stats
        if not worker.alive():
            raise TapstreamError(f"the worker exited ({worker.proc.returncode}); see {worker.log}")
        if time.monotonic() > deadline:
            raise TapstreamError(f"the worker did not flush {events} events within {timeout_s:.0f}s: {stats}")
        time.sleep(0.3)


def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Messages of ``topic`` not yet committed by consumer group ``group``."""
    return sum(end - start for start, end in start_positions(bootstrap, group, topic).values())


def topic_ends(bootstrap: str, names: tuple[str, ...]) -> dict[str, int]:
    """Per topic: the sum of its partitions' end offsets (messages ever written, for deltas)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tapstream-harness-probe"})
    try:
        out = {}
        for name in names:
            parts = consumer.list_topics(name, timeout=10).topics[name].partitions
            out[name] = sum(consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in parts)
        return out
    finally:
        consumer.close()
