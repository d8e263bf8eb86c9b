"""Dagster resources: the lake, the warehouse and the sources of inventory and metrics."""
