"""`python -m tapstream` = the `tapstream` command."""

from tapstream.cli import main

main()
