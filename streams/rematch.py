"""Re-enrich parked punches as soon as their user code is mapped, with no manual step.

Every ``worker.rematch_interval_s`` the worker lists the user codes that still have open parked
punches in Postgres (``unmatched_punches``), keeps those the employee map now resolves to an
active employee, and re-sends their punches — the same bytes, hence the same event ids — to
``attendance.raw``. They then take the ordinary path: enriched, recorded, and marked resolved by
the records sink in the same transaction. Going through the raw topic (rather than writing the
sinks from here) keeps that topic the one log a replay rebuilds everything from.

Re-sent punches carry ``REMATCH_HEADER``, which lets them past the dedup table (it remembers
parked ids, so that a device's re-send of a parked punch is a duplicate). A punch re-sent but
parked again (a race with a mapping that changed back) waits ``rematch_cooldown_s`` before it is
re-sent; re-sending twice is harmless, the sinks being idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from schemas.employee import EmployeeRecord
from sinks.postgres import ConnectionSource
from sinks.postgres_ledger import ParkedPunch, due_punches, mark_rematched, open_codes
from streams.batcher import Send
from streams.logic import REMATCH_HEADER

logger = logging.getLogger(__name__)

MAX_PER_ROUND = 5000  # punches re-sent per round; the rest follow in the next rounds


def mapped_codes(codes: Iterable[str], employee_of: Callable[[str], EmployeeRecord | None]) -> list[str]:
    """The codes that now belong to an active employee."""
    return sorted(code for code in codes if (e := employee_of(code)) is not None and e.active)


class Rematcher:
    """One round at a time (``run_once``), driven by a Faust timer; Postgres calls off the loop."""

    def __init__(
        self,
        pool: ConnectionSource,
        employee_of: Callable[[str], EmployeeRecord | None],
        send: Send,
        raw_topic: str,
        cooldown_s: float,
    ) -> None:
        self.pool = pool
        self.employee_of = employee_of
        self.send = send  # the batcher's Send: (topic, key, value, headers) -> delivery future
        self.raw_topic = raw_topic
        self.cooldown_s = cooldown_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rematch")

    async def run_once(self) -> int:
        """Re-send the due parked punches of newly mapped codes; how many were re-sent."""
        loop = asyncio.get_running_loop()
        codes = await loop.run_in_executor(self._thread, self._open_codes)
        due = mapped_codes(codes, self.employee_of)
        if not due:
            return 0
        punches = await loop.run_in_executor(self._thread, self._due, due)
        if not punches:
            return 0
        futures = [
            await self.send(self.raw_topic, p.device_serial.encode(), p.punch, {REMATCH_HEADER: p.user_code.encode()})
            for p in punches
        ]
        await asyncio.gather(*futures)  # on attendance.raw before they are marked re-sent
        await loop.run_in_executor(self._thread, self._mark, [p.event_id for p in punches])
        logger.info("re-match: %d parked punches of %d newly mapped codes re-sent to %s",
                    len(punches), len({p.user_code for p in punches}), self.raw_topic)
        return len(punches)

    def _open_codes(self) -> list[str]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            return open_codes(cur)

    def _due(self, codes: list[str]) -> list[ParkedPunch]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            return due_punches(cur, codes, self.cooldown_s, MAX_PER_ROUND)

    def _mark(self, ids: list[uuid.UUID]) -> None:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            mark_rematched(cur, ids)
