"""The processes of one `tapstream bench live` run: its isolated names, monitor, SSE readers.

``plan_live_run`` extends infra.bench_run's isolation to the topics the live path adds
(``attendance.live``, ``alerts``): the run's worker publishes to, and its monitor reads, a live
topic of its own. Every process gets metrics ports 0 and a free monitor port, so nothing
clashes with a running pipeline. ``Readers`` drives infra.bench_live_sse client processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


from infra.bench_live_plan import LiveOptions, Tap, sse_counters
from infra.bench_pull import proc_usage
from infra.bench_run import BenchOptions, BenchRun, plan_run
from infra.harness import TapstreamProcess, free_port, wait_http
from tapstream.errors import TapstreamError
from tapstream.settings import ENV_PREFIX, Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveRun(BenchRun):
    """A bench run with its own live and alerts topics and a monitor port."""

    monitor_port: int = 0

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def worker_env(self, base: dict[str, str]) -> dict[str, str]:
        s, p = self.settings, ENV_PREFIX
        env = super().worker_env(base)
        env.update({
            f"{p}WORKER__BATCH_WITHIN_S": str(s.worker.batch_within_s),
            f"{p}WORKER__FETCH_MAX_WAIT_MS": str(s.worker.fetch_max_wait_ms),
            f"{p}MONITOR__HOST": "127.0.0.1",
            f"{p}MONITOR__PORT": str(self.monitor_port),
        })
        return env


def plan_live_run(settings: Settings, options: LiveOptions, run_id: str | None = None) -> LiveRun:
    """infra.bench_run.plan_run plus the batch and fetch settings and a free monitor port."""
    base = plan_run(settings, BenchOptions(events=0, batch_max=options.batch_max), run_id)
    w = base.settings.worker
    if options.batch_within_s is not None:
        w = w.model_copy(update={"batch_within_s": options.batch_within_s})
    if options.fetch_max_wait_ms is not None:
        w = w.model_copy(update={"fetch_max_wait_ms": options.fetch_max_wait_ms})
    isolated = base.settings.model_copy(update={"worker": w})
    return LiveRun(base.run_id, isolated, base.schema, base.base_dsn, free_port())


def start_monitor(run: LiveRun, procs: list[TapstreamProcess]) -> TapstreamProcess:
    """`tapstream monitor` on the run's topics and port; returns once /healthz answers."""
    monitor = TapstreamProcess(["monitor", "--host", "127.0.0.1", "--port", str(run.monitor_port)],
                               run.folder / "monitor.log", env=run.worker_env(dict(os.environ)))
    procs.append(monitor)
    wait_http(run.monitor_url + "/healthz", 120)
    return monitor


def monitor_sse(run: LiveRun) -> dict[str, float]:
    """The monitor's SSE counters (clients, events sent, clients cut off as behind); {} if unread."""
    try:
        with urllib.request.urlopen(run.monitor_url + "/metrics", timeout=10) as response:
            return sse_counters(response.read().decode())
    except OSError as exc:
        logger.warning("monitor /metrics: %s", exc)
        return {}


def write_plan(path: Path, taps: list[Tap]) -> None:
    path.write_text(json.dumps([[t.event_id, t.at] for t in taps]), encoding="utf-8")


class Readers:
    """SSE reader processes (infra.bench_live_sse) sharing ``clients`` and ``slow`` among ``procs``."""

    def __init__(self, run: LiveRun, *, clients: int, slow: int, procs: int, planned: int) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self._logs: list[IO[bytes]] = []
        url = run.monitor_url + "/events"
        count = max(1, min(procs, clients + slow))
        for i in range(count):
            share, slow_share = _share(clients, count, i), _share(slow, count, i)
            log = (run.folder / f"readers-{i}.log").open("wb")
            self._logs.append(log)
            cmd = [sys.executable, "-m", "infra.bench_live_sse", url, "--planned", str(planned),
                   "--clients", str(share), "--slow", str(slow_share)]
            self.children.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                  stderr=log, text=True))

    def wait_ready(self) -> None:
        for child in self.children:
            line = child.stdout.readline() if child.stdout else ""
            if line.strip() != "ready":
                raise TapstreamError(f"an SSE reader process did not connect (said {line!r}); see readers-*.log")

    def send(self, line: str) -> None:
        for child in self.children:
            if child.stdin and child.poll() is None:
                child.stdin.write(line + "\n")
                child.stdin.flush()

    def results(self, stop: bool = False) -> list[dict[str, Any]]:
        """Each process's result line (after telling it to stop, with ``stop``)."""
        if stop:
            self.send("stop")
        out: list[dict[str, Any]] = [{}] * len(self.children)

        def read(i: int, child: subprocess.Popen[str]) -> None:
            line = child.stdout.readline() if child.stdout else ""
            out[i] = json.loads(line) if line.strip() else {}

        threads = [threading.Thread(target=read, args=(i, c)) for i, c in enumerate(self.children)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return out

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                if child.stdin:
                    child.stdin.close()
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        for log in self._logs:
            log.close()


class CpuWindow:
    """CPU used by named processes, and by the whole machine, between ``__init__`` and ``end``."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._started = time.monotonic()
        self._before = {name: _cpu(p) for name, p in pids.items()}
        self._machine = _machine_jiffies()

    def end(self) -> dict[str, float]:
        """Percent of one core per name over the window, and ``machine_busy_pct`` of all cores."""
        seconds = time.monotonic() - self._started
        out = {f"{name}_pct": round(100 * (_cpu(p) - self._before[name]) / seconds, 1) for name, p in self.pids.items()}
        busy0, total0 = self._machine
        busy1, total1 = _machine_jiffies()
        out["machine_busy_pct"] = round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)
        return out


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (those still running)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_usage(pid)[0]
    return total


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _share(total: int, parts: int, i: int) -> int:
    """Part ``i`` of ``total`` split as evenly as possible into ``parts``."""
    return total // parts + (1 if i < total % parts else 0)
