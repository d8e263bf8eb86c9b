"""Dagster assets, one module per stage; each asset is a thin shell around pure logic."""
