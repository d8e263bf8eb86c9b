"""The Parquet lake and the DuckDB warehouse (no Dagster here)."""
