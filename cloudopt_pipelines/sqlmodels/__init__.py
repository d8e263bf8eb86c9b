"""The dbt_like_sql runner (no Dagster here)."""
