"""`tapstream push` (to be filled in)."""

from __future__ import annotations

import typer


def push(ctx: typer.Context) -> None:
    """push (not yet implemented)."""
    raise typer.Exit(2)
