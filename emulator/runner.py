"""Run a Fleet in the foreground until SIGINT/SIGTERM, with the control API and a periodic summary."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from emulator.control import start_control
from emulator.fleet import Fleet

logger = logging.getLogger(__name__)

SUMMARY_EVERY_S = 30.0


async def run(
    fleet: Fleet,
    *,
    control_port: int = 0,
    started: Callable[[Fleet], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    summary_every_s: float = SUMMARY_EVERY_S,
) -> None:
    """Start ``fleet``, call ``started``, serve until a signal (or ``stop``), then close everything.

    ``control_port`` 0 leaves the HTTP control API off; it listens on the fleet's host.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    runner: web.AppRunner | None = None
    await fleet.start()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        if control_port:
            runner = await start_control(fleet, fleet.host, control_port)
        if started is not None:
            await started(fleet)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), summary_every_s)
            except TimeoutError:
                logger.info("emulator: %s", " ".join(f"{k}={v}" for k, v in fleet.summary().items()))
        logger.info("stopping %d emulated devices", len(fleet.devices))
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        await fleet.stop()
