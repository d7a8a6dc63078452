"""The Faust stream worker: topics, tables and agents wiring plain functions together."""
