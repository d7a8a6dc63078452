"""`tapstream emulate zk`: placeholder, replaced by the emulator work."""

from __future__ import annotations

import typer

app = typer.Typer(help="Emulated attendance terminals for testing a deployment without hardware.", no_args_is_help=True)
