"""`tapstream demo` (to be filled in)."""

from __future__ import annotations

import typer


def demo(ctx: typer.Context) -> None:
    """demo (not yet implemented)."""
    raise typer.Exit(2)
