"""Helpers shared by command modules."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from tapstream.settings import Settings


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings built by the root callback."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings), "the root callback builds Settings"
    return obj


def fail(error: Exception | str, code: int = 1) -> typer.Exit:
    """Print a clear one-line error to stderr and return the Exit to raise."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def emit_json(data: Any) -> None:
    """Print one JSON document on stdout (for --json outputs)."""
    typer.echo(json.dumps(data, default=str, sort_keys=True))


class ProgressBars:
    """One progress bar per stage of a long operation (backfill, replay, ...), on stderr."""

    def __init__(self) -> None:
        self._stage = ""
        self._bar: Any = None

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = typer.progressbar(length=max(total, 1), label=f"{stage:<12}", show_pos=True, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(max(0, done - self._bar.pos))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
