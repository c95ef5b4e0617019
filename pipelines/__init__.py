"""The Dagster code location (definitions, jobs, schedules, sensors) and the `tunegraph` CLI."""
