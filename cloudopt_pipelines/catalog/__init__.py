"""Instance specs and prices (no Dagster here)."""
