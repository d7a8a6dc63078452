"""`tapstream worker` (to be filled in)."""

from __future__ import annotations

import typer


def worker(ctx: typer.Context) -> None:
    """worker (not yet implemented)."""
    raise typer.Exit(2)
