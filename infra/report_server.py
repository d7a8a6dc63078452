"""Serve reports from the worker that owns the embedded store, and reach them from elsewhere.

chDB runs one engine per process and locks its folder, so while the worker runs no other
process can open the embedded store. The worker therefore answers report requests on a unix
socket, ``<state>/worker/reports.sock`` (mode 0600: this user on this machine only). Each
query runs on the ClickHouse sink's own thread (``SinkRunner.run``), never beside an insert:
whether chDB tolerates a query on one handle while another thread inserts on another is not
settled (chdb-io/chdb#426, a hang with concurrent queries; chdb-io/chdb-node#51, query
parameters shared between connections of one engine), and a report waiting for the current
batch costs far less than a crashed worker. The queries use a client of their own, so their
session state never touches the sink's.

``query_report`` is what `tapstream report` calls. It tries, in order:

1. an ``http(s)://`` DSN: query that server directly;
2. the embedded store: ask the worker on its socket;
3. no worker listening: open the store here (migrating it first, as the worker would);
4. the store held by a process that does not answer: StackError naming its pid.

Wire format: one JSON line each way. Request ``{"report", "from", "to", "work_start",
"grace_minutes"}`` (dates ISO, to exclusive); reply ``{"ok": true, "columns", "rows"}`` or
``{"ok": false, "error"}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from infra.migrate import migrate_clickhouse
from infra.reports import ReportResult, Window, get_report, run_report
from infra.stack import CHDB_SCHEME, embedded_clickhouse_path, embedded_owner, mask_dsn
from sinks.clickhouse import open_client
from streams.delivery import SinkRunner
from tapstream.errors import ConfigError, StackError, TapstreamError, TransientSinkError
from tapstream.settings import AnalyticsSettings, Settings

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_READ_TIMEOUT_S = 10.0  # a client that connects and says nothing is dropped after this
DEFAULT_TIMEOUT_S = 120.0  # a report waits at most this long for the worker (sink writes first)


class Closeable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class ReportRequest:
    """A report to run: its name, local-date window and lateness rule."""

    name: str
    window: Window
    analytics: AnalyticsSettings

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.name, "from": self.window.start.isoformat(), "to": self.window.end.isoformat(),
            "work_start": self.analytics.work_start.isoformat(), "grace_minutes": self.analytics.grace_minutes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReportRequest:
        """Parse a request; ConfigError when a field is missing or malformed."""
        try:
            window = Window(date.fromisoformat(data["from"]), date.fromisoformat(data["to"]))
            analytics = AnalyticsSettings(work_start=data["work_start"], grace_minutes=data["grace_minutes"])
            return cls(str(data["report"]), window, analytics)
        except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"malformed report request: {exc}") from exc


def socket_path(settings: Settings) -> Path:
    """Where the worker of this state folder serves reports."""
    return settings.path("worker", "reports.sock")


def answer(raw: bytes, run: Callable[[ReportRequest], ReportResult]) -> dict[str, Any]:
    """The reply to one request line: the report's result, or the error as data."""
    try:
        request = ReportRequest.from_json(json.loads(raw))
        get_report(request.name)
        return {"ok": True, **run(request).to_json()}
    except TapstreamError as exc:
        return {"ok": False, "error": str(exc)}
    except json.JSONDecodeError as exc:
        return {"ok": False, "error": f"malformed report request: {exc}"}
    except Exception as exc:  # a bad request or a failing query must not end the worker
        logger.exception("report request failed")
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


class _Handler(socketserver.StreamRequestHandler):
    timeout = REQUEST_READ_TIMEOUT_S

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _UnixServer)
        raw = self.rfile.readline(MAX_REQUEST_BYTES)
        self.wfile.write(json.dumps(answer(raw, server.run)).encode() + b"\n")


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # closing does not wait for a report still running

    def __init__(self, path: Path, run: Callable[[ReportRequest], ReportResult]) -> None:
        self.run = run
        super().__init__(str(path), _Handler)


class ReportServer:
    """Reports on a unix socket, run by ``run``; serving from a thread until close()."""

    def __init__(self, path: Path, run: Callable[[ReportRequest], ReportResult]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a killed worker; only the store's owner gets here
        self._server = _UnixServer(path, run)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="report-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket; safe to call twice."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


class _WorkerReports:
    """The worker's report server and the ClickHouse client it queries on the sink's thread."""

    def __init__(self, settings: Settings, runner: SinkRunner) -> None:
        self._runner = runner
        self._database = settings.clickhouse.database
        dsn = settings.clickhouse_dsn()
        self._client: Client = runner.run(lambda: open_client(dsn, self._database))
        try:
            self._server = ReportServer(socket_path(settings), self._run)
        except OSError:
            self._close_client()
            raise
        logger.info("serving reports on %s", self._server.path)

    def _run(self, request: ReportRequest) -> ReportResult:
        window = request.window
        return self._runner.run(lambda: run_report(
            self._client, self._database, request.name, window.start, window.end, request.analytics))

    def _close_client(self) -> None:
        try:
            self._runner.run(self._client.close)
        except RuntimeError:  # the sink's thread is already shut down: nothing runs beside us
            self._client.close()

    def close(self) -> None:
        self._server.close()
        self._close_client()


class _NoReports:
    def close(self) -> None:
        pass


def start_report_server(settings: Settings, runners: Sequence[SinkRunner]) -> Closeable:
    """Serve reports while the worker owns the embedded store; close() when the sinks close.

    Serves nothing when ClickHouse is a server (`tapstream report` asks it directly) or not a
    sink of this worker (the command opens the store itself), or when the socket cannot be
    bound (logged; reports then wait until the worker stops).
    """
    runner = next((r for r in runners if r.sink.name == "clickhouse"), None)
    if runner is None or not settings.clickhouse_dsn().startswith(CHDB_SCHEME):
        return _NoReports()
    try:
        return _WorkerReports(settings, runner)
    except (OSError, TapstreamError) as exc:
        logger.warning("cannot serve reports on %s, `tapstream report` waits for the worker to stop: %s",
                       socket_path(settings), exc)
        return _NoReports()


def ask_worker(path: Path, request: ReportRequest, timeout_s: float = DEFAULT_TIMEOUT_S) -> ReportResult | None:
    """The worker's answer to ``request``, or None when no worker listens at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # no worker, or a socket file left by a killed one
        try:
            sock.sendall(json.dumps(request.to_json()).encode() + b"\n")
            with sock.makefile("rb") as replies:
                line = replies.readline()
        except TimeoutError as exc:
            raise StackError(f"the worker did not answer report {request.name} within {timeout_s:.0f}s") from exc
    if not line:
        raise StackError("the worker closed the report connection without answering (stopping?): retry")
    try:
        reply = json.loads(line)
    except json.JSONDecodeError as exc:
        raise StackError(f"the worker's answer to report {request.name} is not JSON: {exc}") from exc
    if not reply.get("ok"):
        raise StackError(f"the worker could not run report {request.name}: {reply.get('error')}")
    return ReportResult.from_json(reply)


def query_report(settings: Settings, name: str, window: Window, timeout_s: float = DEFAULT_TIMEOUT_S) -> ReportResult:
    """Run report ``name`` wherever the store can be reached now (see the module docstring)."""
    request = ReportRequest(get_report(name).name, window, settings.analytics)
    dsn = settings.clickhouse_dsn()
    if not dsn.startswith(CHDB_SCHEME):
        try:
            client = open_client(dsn, settings.clickhouse.database)
        except TransientSinkError as exc:
            raise StackError(f"ClickHouse at {mask_dsn(dsn)} unavailable: {exc}") from exc
        return _run_and_close(client, settings, request)
    answered = ask_worker(socket_path(settings), request, timeout_s)
    if answered is not None:
        logger.info("report %s answered by the running worker", name)
        return answered
    return _on_own_store(settings, request)


def _on_own_store(settings: Settings, request: ReportRequest) -> ReportResult:
    path = embedded_clickhouse_path(settings)
    assert path is not None, "only called for a chdb:// DSN"
    if not path.exists():
        raise StackError(f"no analytics store at {path} yet: the worker creates it when it first runs")
    if (owner := embedded_owner(path)) is not None:
        raise _busy(settings, path, owner)
    try:
        client = open_client(settings.clickhouse_dsn(), settings.clickhouse.database)
    except TransientSinkError as exc:  # lost the race for the lock to a process starting now
        raise _busy(settings, path, embedded_owner(path)) from exc
    try:
        migrate_clickhouse(client, settings.clickhouse.database)
    except StackError:
        client.close()
        raise
    logger.info("report %s: no worker running, opened the embedded store %s", request.name, path)
    return _run_and_close(client, settings, request)


def _busy(settings: Settings, path: Path, owner: int | None) -> StackError:
    who = f"pid {owner}" if owner is not None and owner > 0 else "another process"
    return StackError(f"the embedded ClickHouse store {path} is in use by {who}, which does not serve "
                      f"reports on {socket_path(settings)}: retry when it has stopped")


def _run_and_close(client: Client, settings: Settings, request: ReportRequest) -> ReportResult:
    window = request.window
    try:
        return run_report(client, settings.clickhouse.database, request.name, window.start, window.end, request.analytics)
    finally:
        client.close()
