"""The ClickHouse sink: enriched punches into ``attendance_events`` for analytics.

One ``insert`` per batch, column-oriented, tagged with an ``insert_deduplication_token`` that is
a digest of the batch's distinct row values (``sinks.rows.content_fingerprint``):

* a retried batch (same rows, whether or not the first attempt landed) carries the same token
  and the engine drops the repeat at once (the table keeps the last
  ``non_replicated_deduplication_window`` tokens);
* a replay that re-sends the same events with *corrected* values (a fixed employee mapping)
  carries a new token, so it lands and, being the latest insert, wins in ReplacingMergeTree;
* anything that slips through either (a regrouped retry, a token older than the window)
  collapses on event_id at merge time: count with ``FINAL`` (``count_events``).

Offset-based tokens (topic-partition-first-last) were rejected: a replay of the same offsets
with corrected enrichment would be silently dropped as a duplicate.

The same client API reaches the embedded engine (``chdb:///path``) and a server (``http://``).
chDB runs ONE engine per process, bound to the first path opened (opening a second path raises
until every client of the first is closed), and locks that folder against other processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.exceptions import DataError as ClientDataError
from clickhouse_connect.driver.exceptions import OperationalError as ClientOperationalError

from schemas.punch import EnrichedPunch
from sinks.base import WriteResult
from sinks.rows import CLICKHOUSE_COLUMNS, clickhouse_row, content_fingerprint, pivot
from tapstream.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError, first_line

logger = logging.getLogger(__name__)

TABLE = "attendance_events"

# Server error codes that mean "these rows are wrong" (ClickHouse src/Common/ErrorCodes.cpp).
# Every other server error (too many parts, memory limit, timeouts, unknown table while a
# migration is pending, ...) is treated as transient: retrying later can succeed, and a sink
# that is merely unready must not dead-letter good rows.
DATA_ERROR_CODES = {
    6: "CANNOT_PARSE_TEXT",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    376: "CANNOT_PARSE_UUID",
}


def open_client(dsn: str, database: str) -> Client:
    """Open a client for chdb:///path or http(s)://... and create ``database`` if missing.

    Raises TransientSinkError when the server is unreachable or the embedded store is locked by
    another process, ConfigError when this process already runs chDB on another path.
    """
    try:
        client = clickhouse_connect.get_client(dsn=dsn)
    except ClickHouseError as exc:
        if "already initialized with path" in str(exc):
            raise ConfigError(f"this process already runs chDB on another path: {exc}") from exc
        raise TransientSinkError(f"clickhouse unavailable: {first_line(exc)}") from exc
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
    except ClickHouseError as exc:
        client.close()
        raise translate(exc) from exc
    return client


class ClickHouseSink:
    """Writes batches to ``{database}.attendance_events`` through a ready client, closed on close()."""

    name = "clickhouse"

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = database

    def write_batch(self, rows: Sequence[EnrichedPunch]) -> WriteResult:
        """Insert all rows in one block.

        ``inserted`` is the number of rows sent: ClickHouse cannot cheaply tell new rows from
        rows it already holds (they collapse later), and reports a token-deduplicated retry as
        written too. Treat it as an upper bound; count with ``count_events(final=True)``.
        """
        if not rows:
            return WriteResult(0, 0)
        started = time.perf_counter()
        values = [clickhouse_row(row) for row in rows]
        token = content_fingerprint(values)
        try:
            self._client.insert(
                TABLE,
                pivot(values),
                column_names=CLICKHOUSE_COLUMNS,
                database=self._database,
                column_oriented=True,
                settings={"insert_deduplication_token": token},
            )
        except (ClickHouseError, UnicodeEncodeError) as exc:
            raise translate(exc) from exc
        logger.info(
            "clickhouse: wrote batch rows=%d token=%s ms=%.1f",
            len(rows), token[:12], (time.perf_counter() - started) * 1000,
        )
        return WriteResult(offered=len(rows), inserted=len(rows))

    def close(self) -> None:
        """Close the client; safe to call twice."""
        self._client.close()


def count_events(client: Client, database: str, *, final: bool = True) -> int:
    """Return the number of rows in attendance_events; with final, one per event_id."""
    modifier = " FINAL" if final else ""
    try:
        value = client.command(f"SELECT count() FROM {quote_identifier(database)}.{TABLE}{modifier}")
    except ClickHouseError as exc:
        raise translate(exc) from exc
    return int(str(value))  # command() returns a one-value result as a scalar (int or str)


def translate(exc: BaseException) -> SinkError:
    """Map a clickhouse_connect (or encoding) exception to Transient/PermanentSinkError."""
    if isinstance(exc, UnicodeEncodeError):
        return PermanentSinkError("unencodable_text", f"clickhouse: {exc}")
    if isinstance(exc, ClientOperationalError):
        return TransientSinkError(f"clickhouse unavailable: {first_line(exc)}")
    code = getattr(exc, "code", None)
    if isinstance(exc, ClientDataError) and code is None:
        # Raised while serializing a column, before anything is sent: a value out of the
        # column type's range (a DateTime before 1970 or after 2106, a UInt8 over 255).
        return PermanentSinkError("data_exception", f"clickhouse: {first_line(exc)}")
    if code in DATA_ERROR_CODES:
        return PermanentSinkError("data_exception", f"clickhouse {DATA_ERROR_CODES[code]}: {first_line(exc)}")
    return TransientSinkError(f"clickhouse error{f' {code}' if code else ''}: {first_line(exc)}")
