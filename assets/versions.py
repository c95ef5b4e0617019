"""The data versions Dagster recorded: what staleness, resume keys and model tags are built on."""

import dagster as dg
from dagster._core.definitions.data_version import extract_data_version_from_entry


def latest_data_version(
    instance: dg.DagsterInstance, key: dg.AssetKey | str, source: bool = False
) -> str | None:
    """The data version of an asset's latest materialisation (a source's latest observation)."""
    record = instance.get_latest_data_version_record(dg.AssetKey.from_coercible(key), is_source=source)
    version = extract_data_version_from_entry(record.event_log_entry) if record else None
    return version.value if version else None
