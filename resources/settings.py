"""Settings: the state folder, the pipeline YAML, and every path under the state folder.

All runtime state lives under `$TUNEGRAPH_HOME` (default `./data`). Asset outputs are written to
a folder of their own run under `assets/`; which one is current is Dagster's record to say
(`resources/outputs.py`), not a file here.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from stages.config import PipelineConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


def default_home() -> Path:
    return Path(os.environ.get("TUNEGRAPH_HOME", "data")).expanduser().resolve()


def default_config_path() -> Path:
    return Path(os.environ.get("TUNEGRAPH_CONFIG", DEFAULT_CONFIG)).expanduser().resolve()


PREFERENCES = "preferences"  # landing/preferences/ holds preference pairs, not corpus records


def _visible_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class Paths:
    """The one place that knows the layout of the state folder."""

    def __init__(self, home: Path):
        self.home = home

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def mlflow(self) -> Path:
        return self.home / "mlflow"

    def checkpoints(self, asset: str) -> Path:
        """Where a training asset keeps the checkpoints of its current run (one run at a time)."""
        return self.home / "checkpoints" / asset

    def model_cache(self, name: str, version: str) -> Path:
        """A registered model version downloaded from MLflow (for warm starts)."""
        return self.home / "models" / f"{name}-v{version}"

    def signature_cache(self, ngram: int, num_perm: int) -> Path:
        """MinHash signatures by record key: near dedup and the duplicate_rate gate share them."""
        return self.home / "cache" / f"minhash-by-record-{ngram}-{num_perm}"

    def hub_upload(self, name: str, version: str) -> Path:
        """The folder `tunegraph push` fills with what it uploads for a registered version."""
        return self.home / "hub" / f"{name}-v{version}"

    def landing_keys(self, configured_format: str = "auto") -> list[str]:
        """Partition keys of the landing folder: relative POSIX paths of visible files.

        With corpus.format 'auto', files without an extension are left out (README, .gitkeep...);
        landing/preferences/ is left out (preference pairs, read by `preference_pairs`).
        """
        files = [
            p for p in _visible_files(self.landing) if p.relative_to(self.landing).parts[0] != PREFERENCES
        ]
        return [
            p.relative_to(self.landing).as_posix() for p in files if configured_format != "auto" or p.suffix
        ]

    @property
    def preference_landing(self) -> Path:
        """Preference files (prompt, chosen, rejected) land here, apart from the corpus."""
        return self.landing / PREFERENCES

    def preference_files(self) -> list[Path]:
        return [p for p in _visible_files(self.preference_landing) if p.suffix]

    def asset_root(self, asset: str, partition: str | None = None) -> Path:
        """Where an asset (partition) keeps its outputs, one folder per run that wrote one."""
        root = self.home / "assets" / asset
        return root / "partitions" / partition if partition else root


class TunegraphSettings(dg.ConfigurableResource):
    """Where state lives, which pipeline YAML declares this pipeline, and this run's overrides."""

    # Defaults from the environment the code location loads in (as the Definitions' own values),
    # so a launchpad config that sets only `overrides` is complete.
    home: str = Field(
        default=str(default_home()),
        description="State folder ($TUNEGRAPH_HOME): landing files, outputs, MLflow, Dagster.",
    )
    config_path: str = Field(
        default=str(default_config_path()),
        description="The pipeline YAML ($TUNEGRAPH_CONFIG, configs/default.yaml unless set).",
    )
    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Config keys to change for this run only, e.g. {training.max_steps: '10'}: validated "
        "like the YAML, and what MLflow, the model version, lineage and staleness record for the run.",
    )

    def config(self) -> PipelineConfig:
        """The effective config: the YAML with this run's overrides."""
        return load_config(self.config_path, self.overrides)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Fail the run at its start on a bad config or override, with the one-line error; and record
        # the config keys this run reads as observations before any step reads its inputs' versions,
        # so what each asset records as built from is the config it really ran with.
        self.config()
        if context.instance is not None:
            from assets.sources import record_config  # the sources import this module

            record_config(context.instance, self)

    def paths(self) -> Paths:
        return Paths(Path(self.home))

    def eval_file(self, name: str) -> Path:
        """A `data.eval_files` entry: paths are relative to the pipeline YAML."""
        return (Path(self.config_path).parent / name).resolve()
