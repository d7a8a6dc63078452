"""Logging set-up for entry points (library modules only call logging.getLogger(__name__))."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    """Send log records to stderr at ``level``; quiet the chattiest third-party loggers."""
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    for noisy in ("aiokafka", "faust", "mode", "kafka", "urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
