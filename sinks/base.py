"""The one sink contract: ``write_batch(rows)`` and ``close()``.

A sink is given a ready client (so a unit test can hand it a fake), writes a batch of
enriched punches idempotently on ``event_id`` (writing the same rows again changes nothing),
and either lands the batch whole or raises:

* ``TransientSinkError`` — unreachable, timeout, server busy: the caller retries the same batch
  with backoff and does not move past it;
* ``PermanentSinkError`` — the rows themselves are rejected: the caller dead-letters them.

Driver exceptions never leave a sink untranslated.

Finding rejected rows: a ``PermanentSinkError`` from ``write_batch`` condemns the batch, not each
row. The caller re-offers smaller batches (``streams.delivery.SinkRunner`` bisects); a single-row
batch that still raises ``PermanentSinkError`` is an offender to dead-letter, the others land.
This is safe because writes are idempotent, whatever part of the failed batch a store kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.punch import EnrichedPunch


@dataclass(frozen=True)
class WriteResult:
    """What a batch write did: rows offered, rows new to the sink (the rest already there)."""

    offered: int
    inserted: int


class Sink(Protocol):
    """A destination for enriched punches."""

    name: str

    def write_batch(self, rows: Sequence[EnrichedPunch]) -> WriteResult:
        """Write all rows idempotently, or raise TransientSinkError / PermanentSinkError."""
        ...

    def close(self) -> None:
        """Release the client; safe to call twice."""
        ...
