"""Many emulated terminals in one asyncio loop (Fleet), or in a background thread (ThreadedFleet).

One ticker task drives every device's automatic punches from a heap of due times, so a
thousand idle or slow devices cost no tasks and no threads of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import random
import resource
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from emulator.device import Device, DeviceConfig, LogRecord, RecordExport
from emulator.faults import FaultKind, make_fault
from emulator.server import DeviceServer

logger = logging.getLogger(__name__)

T = TypeVar("T")

TICK_MAX_S = 0.25  # the ticker wakes at least this often (picks up rate changes)
SWEEP_S = 30.0  # how often idle UDP peers are looked for
CALL_TIMEOUT_S = 60.0  # ThreadedFleet: longest wait for the loop thread to answer


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a device is 2 sockets plus clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    logger.debug("open-file limit raised from %d to %d", soft, target)
    return target


class Fleet:
    """Emulated terminals, each on its own TCP+UDP port, in the running event loop."""

    def __init__(self, configs: Sequence[DeviceConfig], *, host: str = "127.0.0.1") -> None:
        serials = [c.serial for c in configs]
        duplicates = sorted(s for s, n in Counter(serials).items() if n > 1)
        if duplicates:
            raise ValueError(f"duplicate device serials: {', '.join(duplicates)}")
        self.host = host
        self.devices: dict[str, Device] = {c.serial: Device(c) for c in configs}
        self._servers: dict[str, DeviceServer] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._heap: list[tuple[float, int, str]] = []
        self._generation: dict[str, int] = dict.fromkeys(self.devices, 0)
        self._rng = random.Random(len(serials))
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Bind every device (TCP+UDP) and start the punch generator."""
        raise_nofile_limit()
        loop = self._loop = asyncio.get_running_loop()
        try:
            for serial, device in self.devices.items():
                server = DeviceServer(device, self.host, loop)
                await server.start()
                self._servers[serial] = server
        except OSError:
            await self.stop()
            raise
        for serial, device in self.devices.items():
            self._schedule(serial, device.config.rate_per_s)
        self._ticker = loop.create_task(self._tick(), name="zk-emulator-ticker")
        logger.info("%d emulated devices listening on %s", len(self._servers), self.host)

    async def stop(self) -> None:
        """Stop generating punches and close every session and listener."""
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        for server in self._servers.values():
            await server.close()
        self._servers.clear()

    # -- device-level API -------------------------------------------------------------------
    def device(self, serial: str) -> Device:
        """The Device with this serial; KeyError naming it when unknown."""
        try:
            return self.devices[serial]
        except KeyError:
            raise KeyError(f"unknown device serial {serial!r}") from None

    def port(self, serial: str) -> int:
        """The TCP/UDP port the device listens on (its configured port before start)."""
        server = self._servers.get(serial)
        return server.port if server is not None else self.device(serial).config.port

    def punch(self, serial: str, *, user_code: str | None = None, state: int | None = None,
              at: datetime | None = None) -> LogRecord | None:
        """Record a punch now (or at device wall clock ``at``); None when the device refuses it."""
        return self.device(serial).punch(user_code, state, at)

    def records(self, serial: str) -> list[LogRecord]:
        """The device's log as it stands (after wrap and clear)."""
        return self.device(serial).records()

    def generated(self, serial: str) -> list[LogRecord]:
        """Every punch the device ever recorded, preloaded and wrapped-away ones included."""
        return self.device(serial).generated()

    def export(self, serial: str, *, generated: bool) -> RecordExport:
        """The log (or history) as bytes, to decode outside the event loop."""
        return self.device(serial).export(generated=generated)

    def inject(self, serial: str, kind: FaultKind | str, *, count: int = 1, on_command: int | None = None,
               skip: int = 0, duration_s: float = 5.0) -> None:
        """Arm a fault for the next ``count`` replies to ``on_command`` (None: any), after ``skip``."""
        fault = make_fault(kind, count=count, on_command=on_command, skip=skip, duration_s=duration_s)
        self.device(serial).faults.arm(fault)
        logger.info("device %s: armed %s x%d (command %s, skip %d)", serial, fault.kind.value, count,
                    on_command, skip)

    def reboot(self, serial: str, *, down_s: float = 3.0) -> None:
        """Drop all sessions and refuse clients for ``down_s``; log and clock persist."""
        if down_s < 0:
            raise ValueError("down_s must be >= 0")
        self.device(serial)
        server = self._servers.get(serial)
        if server is None:
            raise RuntimeError("the fleet is not started")
        server.reboot(down_s)

    def set_rate(self, rate_per_s: float, serial: str | None = None) -> None:
        """Change the automatic punch rate of one device, or of all when ``serial`` is None."""
        if rate_per_s < 0:
            raise ValueError("rate_per_s must be >= 0")
        targets = [self.device(serial).serial] if serial is not None else list(self.devices)
        for target in targets:
            self.devices[target].config.rate_per_s = rate_per_s
            if self._ticker is not None:
                self._schedule(target, rate_per_s)

    def stats(self) -> dict[str, dict[str, object]]:
        """Per serial: sessions, commands, punches, live events, faults, reboot state ..."""
        out: dict[str, dict[str, object]] = {}
        for serial, device in self.devices.items():
            row = device.stats()
            row["port"] = self.port(serial)
            out[serial] = row
        return out

    def summary(self) -> dict[str, int]:
        """Fleet-wide totals for a periodic log line."""
        keys = ("sessions_open", "commands", "live_sent", "punches_refused", "bad_packets")
        totals = {k: sum(d.counters[k] for d in self.devices.values()) for k in keys}
        totals["devices"] = len(self.devices)
        totals["punches"] = sum(d.generated_count for d in self.devices.values())
        totals["rebooting"] = sum(d.rebooting for d in self.devices.values())
        return totals

    # -- automatic punches ------------------------------------------------------------------
    def _schedule(self, serial: str, rate: float) -> None:
        self._generation[serial] += 1
        if rate > 0 and self._loop is not None:
            due = self._loop.time() + self._rng.expovariate(rate)
            heapq.heappush(self._heap, (due, self._generation[serial], serial))

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_S
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                due, generation, serial = heapq.heappop(self._heap)
                rate = self.devices[serial].config.rate_per_s
                if generation != self._generation[serial] or rate <= 0:
                    continue
                self._generate(serial)
                nxt = due + self._rng.expovariate(rate)
                if nxt < now - 1.0:  # the loop was busy: do not catch up with a burst
                    nxt = now + self._rng.expovariate(rate)
                heapq.heappush(self._heap, (nxt, generation, serial))
            if now >= next_sweep:
                for server in self._servers.values():
                    server.sweep()
                next_sweep = now + SWEEP_S
            delay = min(TICK_MAX_S, self._heap[0][0] - now) if self._heap else TICK_MAX_S
            await asyncio.sleep(max(delay, 0.002))

    def _generate(self, serial: str) -> None:
        try:
            self.devices[serial].punch()
        except Exception:  # one device's bad state must not stop the others' punches
            logger.exception("device %s: automatic punch failed", serial)


class ThreadedFleet:
    """A Fleet running in a daemon thread with its own loop; blocking, thread-safe methods."""

    def __init__(self, configs: Sequence[DeviceConfig], *, host: str = "127.0.0.1") -> None:
        self.fleet = Fleet(configs, host=host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="zk-emulator", daemon=True)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        """Start the loop thread; return once every device listens."""
        self._thread.start()
        self._started = True
        try:
            asyncio.run_coroutine_threadsafe(self.fleet.start(), self._loop).result(CALL_TIMEOUT_S)
        except BaseException:
            self._shutdown()
            raise

    def stop(self) -> None:
        """Close every device and end the loop thread."""
        if not self._started:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.fleet.stop(), self._loop).result(CALL_TIMEOUT_S)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._started = False
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> ThreadedFleet:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the loop thread and return its result (or raise its exception)."""
        if not self._started:
            return fn(*args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the calling thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(CALL_TIMEOUT_S)

    def port(self, serial: str) -> int:
        """See Fleet.port."""
        return self._call(self.fleet.port, serial)

    def punch(self, serial: str, *, user_code: str | None = None, state: int | None = None,
              at: datetime | None = None) -> LogRecord | None:
        """See Fleet.punch."""
        return self._call(self.fleet.punch, serial, user_code=user_code, state=state, at=at)

    def records(self, serial: str) -> list[LogRecord]:
        """See Fleet.records (decoded in the calling thread)."""
        return self._call(self.fleet.export, serial, generated=False).decode()

    def generated(self, serial: str) -> list[LogRecord]:
        """See Fleet.generated (decoded in the calling thread)."""
        return self._call(self.fleet.export, serial, generated=True).decode()

    def inject(self, serial: str, kind: FaultKind | str, *, count: int = 1, on_command: int | None = None,
               skip: int = 0, duration_s: float = 5.0) -> None:
        """See Fleet.inject."""
        self._call(self.fleet.inject, serial, kind, count=count, on_command=on_command, skip=skip,
                   duration_s=duration_s)

    def reboot(self, serial: str, *, down_s: float = 3.0) -> None:
        """See Fleet.reboot."""
        self._call(self.fleet.reboot, serial, down_s=down_s)

    def set_rate(self, rate_per_s: float, serial: str | None = None) -> None:
        """See Fleet.set_rate."""
        self._call(self.fleet.set_rate, rate_per_s, serial)

    def stats(self) -> dict[str, dict[str, object]]:
        """See Fleet.stats."""
        return self._call(self.fleet.stats)
