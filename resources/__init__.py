"""Dagster resources: where things live (settings), which services are used (MLflow, training launcher)."""
