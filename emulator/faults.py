"""Armed faults of one emulated device: what goes wrong, for which replies, how often."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    """How a reply (or a live event) misbehaves; see docs/emulator.md for pyzk's reaction."""

    DROP = "drop"  # close the connection instead of replying
    STALL = "stall"  # stop replying for duration_s, then carry on
    GARBAGE = "garbage"  # reply with random bytes without the magic
    TRUNCATE = "truncate"  # send only part of the reply packet, then close
    WRONG_LENGTH = "wrong_length"  # TCP length field does not match the bytes
    GARBAGE_LIVE = "garbage_live"  # a live event pyzk 0.9 cannot parse (kills live_capture)
    SILENT_LIVE = "silent_live"  # live events silently stop for duration_s; the log still grows


LIVE_KINDS = frozenset({FaultKind.GARBAGE_LIVE, FaultKind.SILENT_LIVE})


@dataclass(slots=True)
class Fault:
    """One armed fault; ``count`` firings left after ``skip`` matching events pass untouched."""

    kind: FaultKind
    count: int = 1
    on_command: int | None = None
    skip: int = 0
    duration_s: float = 5.0

    @property
    def live(self) -> bool:
        """True for faults that act on live events rather than command replies."""
        return self.kind in LIVE_KINDS

    def matches(self, command: int | None) -> bool:
        """Whether this fault applies to a reply to ``command`` (None: a live event)."""
        if command is None:
            return self.live
        return not self.live and (self.on_command is None or self.on_command == command)


def make_fault(kind: FaultKind | str, *, count: int = 1, on_command: int | None = None,
               skip: int = 0, duration_s: float = 5.0) -> Fault:
    """Validate and build a Fault; ValueError on an unknown kind or negative numbers."""
    try:
        fault_kind = FaultKind(kind)
    except ValueError as exc:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault kind {kind!r} (one of {known})") from exc
    if count < 1 or skip < 0 or duration_s < 0:
        raise ValueError("count must be >= 1, skip and duration_s >= 0")
    if on_command is not None and not 0 <= on_command <= 0xFFFF:
        raise ValueError(f"on_command {on_command} is not a 16-bit command code")
    return Fault(fault_kind, count, on_command, skip, duration_s)


class FaultPlan:
    """The faults armed on one device, consumed in arming order."""

    def __init__(self) -> None:
        self._armed: list[Fault] = []
        self.fired = 0
        self.silent_until = 0.0  # loop time until which live events are swallowed

    def arm(self, fault: Fault) -> None:
        """Add a fault behind those already armed."""
        self._armed.append(fault)

    def clear(self) -> None:
        """Disarm everything."""
        self._armed.clear()
        self.silent_until = 0.0

    @property
    def armed(self) -> int:
        """Faults still waiting to fire."""
        return len(self._armed)

    def take(self, command: int | None) -> Fault | None:
        """The fault that fires for this reply (None: a live event), if any.

        Every matching fault that still has matches to skip counts this one as skipped; the
        first matching fault with nothing left to skip fires and loses one of its count.
        """
        if not self._armed:
            return None
        firing: Fault | None = None
        for fault in self._armed:
            if not fault.matches(command):
                continue
            if fault.skip > 0:
                fault.skip -= 1
            elif firing is None:
                firing = fault
        if firing is None:
            return None
        firing.count -= 1
        if firing.count <= 0:
            self._armed.remove(firing)
        self.fired += 1
        return firing
