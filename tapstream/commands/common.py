"""Helpers shared by command modules."""

from __future__ import annotations

import json
from typing import Any

import typer

from tapstream.errors import TapstreamError
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
