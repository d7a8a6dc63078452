"""Reading a ``text/event-stream``: the client side of monitor.sse, for the demo's live check,
the bench's readers and tests. Pure: bytes in, whole events out, whatever the chunking."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    type: str
    id: str | None
    data: str


class SseParser:
    """Incremental text/event-stream parser: feed chunks, get whole events (comments dropped)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        data = self._rest + chunk
        if b"\r" in data:
            # A lone \r at the end may be half of a \r\n: keep it for the next chunk.
            keep = data.endswith(b"\r")
            data = data[:-1] if keep else data
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep else b"")
        blocks = data.split(b"\n\n")
        self._rest = blocks.pop()
        return [e for e in map(_event, blocks) if e is not None]


def _event(block: bytes) -> SseEvent | None:
    kind, event_id, data = "message", None, []
    for raw in block.split(b"\n"):
        line = raw.decode("utf-8", errors="replace")
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
    if not data and event_id is None and kind == "message":
        return None  # only comments (keepalives)
    return SseEvent(kind, event_id, "\n".join(data))
