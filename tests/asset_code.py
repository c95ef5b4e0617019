"""What each asset declares it runs (the `code_version(...)` lines in assets/*.py), for the tests.

tests/unit/test_code_version.py proves this table equals the declarations (same versions), so a
test can ask "what if this module changed?" of every asset without editing a file.
"""

from collections.abc import Callable

from stages.code_version import closure, code_version, read_source

# asset -> (the module that defines it, the modules it runs)
RUNS: dict[str, tuple[str, list[str]]] = {
    "raw_corpus": ("assets.corpus", ["stages.readers", "stages.pii", "stages.content", "stages.tables"]),
    "clean_corpus": (
        "assets.corpus",
        ["stages.cleaning", "stages.pii", "stages.dedup", "stages.content", "stages.tables"],
    ),
    "deduplicated_corpus": (
        "assets.dedup",
        [
            "stages.dedup",
            "stages.near_dedup",
            "stages.columns",
            "stages.split",
            "stages.decontamination",
            "stages.scan_cache",
            "stages.readers",
            "stages.cleaning",
            "stages.content",
            "stages.tables",
            "assets.dataset_card",
        ],
    ),
    "augmented_corpus": (
        "assets.augment",
        [
            "stages.augmentation",
            "stages.evaluation",
            "stages.model_source",
            "stages.decontamination",
            "stages.pii",
            "stages.dedup",
            "stages.readers",
            "stages.scan_cache",
            "stages.content",
            "stages.tables",
        ],
    ),
    "tokenized_dataset": (
        "assets.tokenize",
        [
            "stages.chat",
            "stages.packing",
            "stages.plots",
            "stages.content",
            "stages.tables",
            "assets.dataset_card",
        ],
    ),
    "base_model": ("assets.model", ["stages.model_source", "stages.content", "stages.tables"]),
    "fine_tuned_model": (
        "assets.model",
        ["stages.launch", "stages.train", "assets.training_run", "stages.content", "stages.tables"],
    ),
    "preference_pairs": (
        "assets.preference",
        [
            "stages.preferences",
            "stages.cleaning",
            "stages.decontamination",
            "stages.evaluation",
            "stages.model_source",
            "stages.split",
            "stages.content",
            "stages.tables",
        ],
    ),
    "preference_model": (
        "assets.preference",
        ["stages.launch", "stages.dpo", "assets.training_run", "stages.lineage", "stages.tables"],
    ),
    "model_evaluation": (
        "assets.evaluation",
        [
            "stages.evaluation",
            "stages.model_card",
            "stages.model_source",
            "stages.promotion",
            "stages.content",
            "stages.tables",
        ],
    ),
    "gguf_model": ("assets.export", ["stages.gguf_export", "stages.content", "stages.tables"]),
}


def asset_version(asset: str, read: Callable[[str], bytes] = read_source) -> str:
    module, runs = RUNS[asset]
    return code_version(*runs, asset_module=module, read=read)


def covered(asset: str) -> list[str]:
    """Every module whose source is in the asset's code version."""
    module, runs = RUNS[asset]
    return closure(*runs, asset_module=module)


def edited(module: str) -> Callable[[str], bytes]:
    """The source reader, as if `module` had just been edited (a comment added)."""
    return lambda name: read_source(name) + (b"\n# edited\n" if name == module else b"")
