"""What a benchmark figure is worth without: the machine, the versions, and a profile summary.

``machine()`` and ``client_versions()`` read only this process and /proc; the server versions
(PostgreSQL, the ClickHouse engine) are asked by infra.bench once the run is over.
``profile_summary`` turns the .prof files written by infra.bench_profile into text.
"""

from __future__ import annotations

import io
import os
import platform
import pstats
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "faust-streaming", "aiokafka", "mode-streaming", "confluent-kafka", "psycopg",
    "clickhouse-connect", "chdb", "pydantic", "rocksdict",
)


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first ``name: value`` line of a /proc file, or None."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def machine() -> dict[str, Any]:
    """CPU model, logical cores, memory (GiB), OS and the load average when asked."""
    mem_kib = _proc_field("/proc/meminfo", "MemTotal")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib.split()[0]) / 1024 / 1024, 1) if mem_kib else None,
        "os": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
    }


def client_versions() -> dict[str, Any]:
    """Python and the client libraries, as installed (librdkafka and libpq as linked)."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        out["librdkafka"] = None
    try:
        from psycopg import pq

        out["libpq"] = pq.version()
    except ImportError:
        out["libpq"] = None
    return out


def machine_line(info: dict[str, Any]) -> str:
    """One human line: 'AMD EPYC, 2 cores, 23.5 GiB, Linux 6.x'."""
    return f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}"


def profile_summary(paths: list[Path], top: int = 25) -> str:
    """Top functions by cumulative and by own (total) time of each .prof file, as text."""
    out = io.StringIO()
    for path in paths:
        if not path.exists():
            continue
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs()
        for order in ("cumulative", "tottime"):
            out.write(f"\n=== {path.name}: top {top} by {order} ===\n")
            stats.sort_stats(order).print_stats(top)
    return out.getvalue()
