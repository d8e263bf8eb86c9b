"""The embedded demo data."""
