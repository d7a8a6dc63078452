"""Tapstream: the CLI, the settings tree and the error tree."""
