"""Collectors: where inventory and metrics come from (demo data or real AWS). No Dagster here."""
