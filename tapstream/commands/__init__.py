"""CLI command groups, one module per area; each stays thin and calls library code."""
