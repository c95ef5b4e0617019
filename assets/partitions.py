"""Each landing file is one partition of the per-file data assets (key: its path under landing/)."""

import dagster as dg

landing_files = dg.DynamicPartitionsDefinition(name="landing_files")
