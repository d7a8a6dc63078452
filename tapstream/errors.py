"""Tapstream's exception tree. Low-level errors are translated where a driver is called.

    TapstreamError
    ├── ConfigError            a setting is missing or contradictory (fix the configuration)
    ├── StackError             a local service could not be installed, started or stopped
    ├── ContractError          bytes or fields do not make a valid event (permanent: quarantine)
    ├── SpoolError             the producer's durable spool cannot be written (refuse the batch)
    ├── DeviceError            a pull device failed to answer or answered nonsense (reconnect later)
    └── SinkError              a sink write failed
        ├── TransientSinkError network, server down, timeout, lock: retry the whole batch
        └── PermanentSinkError the data itself is rejected: dead-letter, never retry as is

Transient errors are retried with backoff and never drop data; permanent ones carry a short
machine-readable ``reason`` so the dead-letter record says why.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (drivers add hints and the query below it), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TapstreamError(Exception):
    """Base of every error Tapstream raises on purpose."""


class ConfigError(TapstreamError):
    """A setting is missing, malformed or contradicts another."""


class StackError(TapstreamError):
    """A local service (broker, Postgres, ClickHouse) failed to install, start or stop."""


class ContractError(TapstreamError):
    """Input does not decode into a valid event; ``reason`` is a quarantine reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SpoolError(TapstreamError):
    """The producer's spool could not durably store records."""


class DeviceError(TapstreamError):
    """A pull device is unreachable, refused us, or sent bytes that do not parse: retry later."""


class SinkError(TapstreamError):
    """A sink write failed."""


class TransientSinkError(SinkError):
    """The sink is unreachable or busy; the same batch may succeed later."""


class PermanentSinkError(SinkError):
    """The sink rejects the data itself; retrying the same rows cannot succeed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
