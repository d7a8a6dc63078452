"""A pull device's high-water mark: how much of its log has already been produced.

Device logs have no record numbers, and their clocks jump, so neither a count nor a timestamp
alone says where "new" starts. The mark keeps both the number of records covered and a
fingerprint of the last one. On the next download:

* the record at that position still has that fingerprint: the log only grew, resume after it;
* it does not, but the fingerprint is found elsewhere: the log was partly cleared or wrapped
  (oldest records overwritten), resume after the last place it is found;
* it is found nowhere: the log was cleared (or wrapped past the mark), produce it all again —
  safe, because every punch keeps its event id and the pipeline drops what it already has.

The mark is stored in the spool, in the same transaction as the records it covers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    """``count`` records of the log are produced; the last of them has ``fingerprint``."""

    count: int
    fingerprint: str

    def encode(self) -> str:
        return f"{self.count}:{self.fingerprint}"

    @classmethod
    def decode(cls, text: str | None) -> Mark | None:
        """The stored mark, or None when there is none (or it is unreadable: start over)."""
        if not text:
            return None
        count, _, fingerprint = text.partition(":")
        return cls(int(count), fingerprint) if count.isdigit() else None


def fingerprint(raw: bytes) -> str:
    """A short digest of one record's bytes."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def mark_after(raws: Sequence[bytes]) -> Mark:
    """The mark covering a whole downloaded log."""
    return Mark(len(raws), fingerprint(raws[-1]) if raws else "")


@dataclass(frozen=True)
class Resume:
    """Where production resumes in a downloaded log, and why (for the log line)."""

    start: int
    why: str


def resume_point(raws: Sequence[bytes], mark: Mark | None) -> Resume:
    """Index of the first record of ``raws`` (the downloaded log, oldest first) not yet produced."""
    if mark is None:
        return Resume(0, "first download")
    if mark.count == 0:
        return Resume(0, "the log was empty last time")
    if mark.count <= len(raws) and fingerprint(raws[mark.count - 1]) == mark.fingerprint:
        return Resume(mark.count, "log grew")
    for index in range(len(raws) - 1, -1, -1):
        if fingerprint(raws[index]) == mark.fingerprint:
            return Resume(index + 1, f"log shifted (cleared or wrapped): mark found at {index}")
    return Resume(0, "mark not in the log (cleared or wrapped past it): producing it all again")
