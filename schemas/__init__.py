"""Versioned event contracts shared by producers, streams and sinks (see README.md here)."""
