"""Dagster-free pipeline logic, one module per concern. Assets call these with plain data."""
