"""`tapstream pull`: one process keeping every enabled pull device of the registry collected.

Each device runs in its own small thread (pyzk is blocking; a thread blocked in ``recv`` costs
memory, not CPU). Everything else is shared: one spool writer doing group commits, one Kafka
publisher, one registry refreshed every ``devices.registry_refresh_s`` seconds. The supervisor
reconciles the running workers with the registry every few seconds: a new or re-enabled device
starts, a disabled or removed one stops, a changed one (address, port, key, zone) restarts.
A status file (``state/pull/status.json``) shows every device at a glance, and Prometheus
metrics are served on ``metrics.pull_port`` (producers.pull.metrics, docs/metrics.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from producers.publisher import Publisher, publishing_metrics
from producers.pull.device import ClientFactory, DeviceWorker, Output
from producers.pull.client import PullClient
from producers.pull.metrics import PullMetrics, devices_metrics
from producers.pull.writer import SpoolWriter
from producers.registry import DeviceInfo, Registry, postgres_loader
from producers.spool import Spool
from tapstream.metrics import collect_with, new_registry, serve
from tapstream.settings import Settings

logger = logging.getLogger(__name__)

THREAD_STACK_BYTES = 512 * 1024  # pyzk's call depth is shallow; 8 MiB stacks x 1,000 devices is waste


class Supervisor:
    """Starts, stops and restarts device workers to match the registry."""

    def __init__(self, settings: Settings, registry: Registry, output: Output, *,
                 client_factory: ClientFactory = PullClient, status_path: Path | None = None,
                 metrics: PullMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._registry = registry
        self._output = output
        self._client_factory = client_factory
        self._status_path = status_path
        self._workers: dict[str, tuple[DeviceInfo, DeviceWorker, threading.Thread]] = {}
        self._stopping: list[tuple[DeviceWorker, threading.Thread]] = []

    def wanted(self) -> dict[str, DeviceInfo]:
        """The enabled pull devices of the registry, by serial."""
        return {
            serial: info for serial, info in self._registry.devices().items()
            if info.kind == "pull" and info.enabled and info.address
        }

    def reconcile(self) -> None:
        """Bring the running workers in line with the registry."""
        wanted = self.wanted()
        for serial, (info, worker, thread) in list(self._workers.items()):
            if wanted.get(serial) != info:
                why = "removed or disabled" if serial not in wanted else "changed in the registry"
                logger.info("device %s: %s, stopping", serial, why)
                worker.stop()
                self._stopping.append((worker, thread))
                del self._workers[serial]
        for serial, info in wanted.items():
            if serial not in self._workers:
                self._start(info)
        self._stopping = [(w, t) for w, t in self._stopping if t.is_alive()]

    def _start(self, info: DeviceInfo) -> None:
        worker = DeviceWorker(info, self._settings, self._output, client_factory=self._client_factory,
                              metrics=self._metrics)
        thread = threading.Thread(target=worker.run, name=f"pull-{info.serial}", daemon=True)
        thread.start()
        self._workers[info.serial] = (info, worker, thread)

    def workers(self) -> list[DeviceWorker]:
        # list() copies the values in one step: the metrics thread calls this while reconcile runs.
        return [worker for _info, worker, _thread in list(self._workers.values())]

    def run(self, stop: threading.Event, *, reconcile_s: float = 5.0, status_s: float = 1.0) -> None:
        """Reconcile every ``reconcile_s`` and write the status file every ``status_s`` seconds
        until ``stop`` is set; then stop every worker."""
        threading.stack_size(THREAD_STACK_BYTES)
        next_reconcile = 0.0
        try:
            while True:
                if time.monotonic() >= next_reconcile:
                    self.reconcile()
                    next_reconcile = time.monotonic() + reconcile_s
                self.write_status()
                if stop.wait(status_s):
                    break
        finally:
            self.shutdown()

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop every worker and wait for them (live capture notices within a tick)."""
        pending = [(w, t) for _i, w, t in self._workers.values()] + self._stopping
        for worker, _thread in pending:
            worker.stop()
        limit = timeout_s if timeout_s is not None else self._settings.pull.timeout_s + 5.0
        deadline = time.monotonic() + limit
        for _worker, thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [w.device.serial for w, t in pending if t.is_alive()]
        if alive:
            logger.warning("%d devices still busy at shutdown (blocked on a slow device): %s", len(alive), alive[:10])
        self._workers.clear()
        self._stopping.clear()
        self.write_status()

    def write_status(self) -> None:
        """Every device's latest status as one JSON file (atomic replace)."""
        if self._status_path is None:
            return
        devices = {w.device.serial: w.status.model_dump(mode="json") for w in self.workers()}
        document = {"pid": os.getpid(), "written_at": time.time(), "devices": devices}
        tmp = self._status_path.with_suffix(".tmp")
        try:
            self._status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
            tmp.replace(self._status_path)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self._status_path, exc)


def run_pull(settings: Settings, stop: threading.Event) -> None:
    """Run the pull producer until ``stop`` is set (the CLI sets it on SIGINT/SIGTERM)."""
    _raise_open_files_limit()
    spool = Spool(settings.path("spool", "pull.sqlite3"))
    publisher = Publisher(spool, settings, batch=settings.pull.publish_batch, name="pull")
    writer = SpoolWriter(spool, publisher)
    registry = Registry(
        postgres_loader(settings.postgres.effective_dsn(), connect_timeout_s=settings.postgres.connect_timeout_s),
        snapshot_path=settings.path("registry", "pull-devices.json"),
        refresh_s=settings.devices.registry_refresh_s,
    )
    metrics = new_registry()
    supervisor = Supervisor(settings, registry, writer, status_path=settings.path("pull", "status.json"),
                            metrics=PullMetrics(metrics))
    collect_with(metrics, lambda: publishing_metrics("pull", spool, publisher))
    collect_with(metrics, lambda: devices_metrics(supervisor.workers()))
    server = serve(metrics, settings.metrics.host, settings.metrics.pull_port, "TAPSTREAM_METRICS__PULL_PORT")
    publisher.start()
    writer.start()
    try:
        registry.start()
        logger.info("pull producer started: %d enabled pull devices", len(supervisor.wanted()))
        supervisor.run(stop)
    finally:
        registry.stop()
        writer.stop()
        publisher.stop()
        if server is not None:
            server.shutdown()
        spool.close()


def _raise_open_files_limit() -> None:
    # Two sockets per device at connect time (pyzk's probe + the session): lift the soft limit.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
