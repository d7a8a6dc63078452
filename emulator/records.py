"""Users, log records and the frozen buffers a bulk read serves (device.py's data types)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from emulator import protocol


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One recorded punch as the device stores it."""

    index: int  # the Nth punch this device ever recorded (survives wrap and clear)
    uid: int  # internal user sn
    user_code: str  # the PIN pyzk reports as user_id
    device_time: datetime  # naive device wall clock, second precision
    state: int  # attendance state (0 in, 1 out, 4 OT-in, 5 OT-out ...)
    verify: int  # verify method
    recorded_at: float | None = None  # epoch seconds when punched live (None for preloaded records)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Users and log bytes frozen for one session's bulk reads, with the counts it reported."""

    users: bytes
    user_count: int
    records: bytes
    record_count: int


@dataclass(frozen=True, slots=True)
class RecordExport:
    """A copy of (part of) the history, decodable outside the event loop."""

    record_format: int
    first_index: int
    data: bytes
    codes: dict[int, str]  # uid -> user code
    recorded_at: dict[int, float] | None = None  # history index -> epoch seconds of live punches

    def decode(self) -> list[LogRecord]:
        """Turn the bytes into LogRecords with their history indexes."""
        uids = {code: uid for uid, code in self.codes.items()}
        times = self.recorded_at or {}
        out: list[LogRecord] = []
        for i, raw in enumerate(protocol.decode_records(self.record_format, self.data)):
            code = raw.user_code if raw.user_code is not None else self.codes.get(raw.uid or 0, str(raw.uid))
            uid = raw.uid if raw.uid is not None else uids.get(code, 0)
            t = protocol.decode_time(raw.packed_time)
            index = self.first_index + i
            out.append(LogRecord(index, uid, code, t, raw.state, raw.verify, times.get(index)))
        return out


class UserTable:
    """The enrolled users: uid 1, 2, ... with numeric codes "1001", "1002", ..."""

    def __init__(self, user_format: int, record_format: int) -> None:
        self._user_format = user_format
        # 28-byte users and 16-byte records store the PIN as a u32
        self._numeric = user_format == 28 or record_format == 16
        self._code_of: dict[int, str] = {}
        self._uid_of: dict[str, int] = {}
        self._uids: list[int] = []
        self._blob: bytes | None = None

    def __len__(self) -> int:
        return len(self._uids)

    def populate(self, n: int) -> None:
        """Enroll users uid 1..n with codes str(1000 + uid)."""
        for uid in range(1, n + 1):
            self._add(uid, str(1000 + uid))

    def _add(self, uid: int, code: str) -> None:
        self._code_of[uid] = code
        self._uid_of[code] = uid
        self._uids.append(uid)
        self._blob = None

    def uid_for(self, code: str) -> int:
        """The uid of ``code``, enrolling it first when unknown (a new badge at the terminal)."""
        uid = self._uid_of.get(code)
        if uid is not None:
            return uid
        if not code or len(code.encode()) > 23:
            raise ValueError(f"user code {code!r} must be 1-23 bytes")
        if self._numeric and not (code.isdigit() and int(code) <= 0xFFFFFFFF):
            raise ValueError(f"user code {code!r} must be numeric for this device's formats")
        uid = max(self._uids, default=0) + 1
        if uid > 65535:
            raise ValueError("no free uid left on this device")
        self._add(uid, code)
        return uid

    def random_uid(self, rng: random.Random) -> int:
        """A uniformly chosen enrolled uid (the table must not be empty)."""
        return rng.choice(self._uids)

    def code_of(self, uid: int) -> str:
        """The PIN of ``uid``."""
        return self._code_of[uid]

    def codes(self) -> dict[int, str]:
        """A copy of uid -> code."""
        return dict(self._code_of)

    def blob(self) -> bytes:
        """All users encoded back to back (cached until the table changes)."""
        if self._blob is None:
            fmt = self._user_format
            self._blob = b"".join(
                protocol.encode_user(fmt, uid, code, f"User {code}" if fmt == 72 else f"U{code}")
                for uid, code in self._code_of.items()
            )
        return self._blob
