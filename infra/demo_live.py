"""The demo's live watcher: `tapstream monitor` beside the worker, and one SSE client counting
the punches it shows, so the demo checks the live feed like every other store.

The client connects before the morning is played (a stream without Last-Event-ID starts at
"now"), reads ``/events`` in a thread and keeps the distinct event ids of ``punch`` events.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from infra.harness import TapstreamProcess, free_port, wait_http
from monitor.sse_reader import SseParser

READ_TIMEOUT_S = 60.0  # the monitor sends a keepalive every 15 s: silence this long is a fault


class LiveWatcher:
    """`tapstream monitor` on a free port plus a thread counting the punches of its /events."""

    def __init__(self, logs: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.punches: set[str] = set()
        self.error: str | None = None
        self._logs = logs
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, name="demo-sse", daemon=True)
        self._monitor: TapstreamProcess | None = None

    def __enter__(self) -> LiveWatcher:
        host, port = self.url.removeprefix("http://").split(":")
        self._monitor = TapstreamProcess(["monitor", "--host", host, "--port", port], self._logs / "monitor.log")
        wait_http(self.url + "/healthz", 60)
        self._thread.start()
        self._connected.wait(10)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._closing.set()
        if self._monitor is not None:
            self._monitor.stop()  # closes /events: the reader sees its end and returns
        self._thread.join(10)

    def wait_for(self, count: int, timeout_s: float) -> int:
        """Wait until ``count`` distinct punches were shown (or the timeout); return how many were."""
        deadline = time.monotonic() + timeout_s
        while len(self.punches) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.punches)

    def _read(self) -> None:
        parser = SseParser()
        try:
            with urllib.request.urlopen(self.url + "/events", timeout=READ_TIMEOUT_S) as response:
                self._connected.set()
                while chunk := response.read1(65536):
                    for event in parser.feed(chunk):
                        if event.type == "punch":
                            self.punches.add(str(json.loads(event.data)["event_id"]))
        except (OSError, http.client.HTTPException) as exc:
            if not self._closing.is_set():  # a stopping monitor cuts the stream mid-chunk: expected
                self.error = f"/events failed: {exc!r}"
        finally:
            self._connected.set()
