"""Destinations: one module per store behind the contract in sinks/base.py."""
