"""What `tunegraph push` uploads: the GGUF files that passed their check, and a line for each refused."""

from pathlib import Path

import dagster as dg

from pipelines.model_commands import gguf_files
from resources.outputs import recorded
from resources.settings import Paths
from stages import hub
from stages.tables import write_json


def _check(kind: str, relative_diff: float, tokenizer_matches: bool = True) -> dict:
    tolerance = {"f16": 0.005, "q8_0": 0.08}[kind]
    return {"file": f"tiny-v1-{kind}.gguf", "kind": kind, "relative_diff": relative_diff, "tolerance": tolerance,
            "tokenizer_matches": tokenizer_matches, "passed": tokenizer_matches and relative_diff <= tolerance}  # fmt: skip


def test_a_gguf_file_whose_check_failed_is_refused_with_what_to_do(home: Path, instance, tmp_path: Path):  # noqa: ANN001
    paths = Paths(home)
    out = paths.asset_root("gguf_model") / "run"
    out.mkdir(parents=True)
    for kind in ("f16", "q8_0"):
        (out / f"tiny-v1-{kind}.gguf").write_bytes(b"GGUF")
    write_json(out / "summary.json", {"enabled": True, "model_name": "tiny", "version": "1",
                                      "checks": [_check("f16", 0.001), _check("q8_0", 0.31)]})  # fmt: skip
    # What gguf_model's materialisation records: its folder is the current output push reads.
    instance.report_runless_asset_event(dg.AssetMaterialization("gguf_model", metadata=recorded(out)))
    files, refused = gguf_files(paths, "tiny", "1")
    assert [f.name for f in files] == ["tiny-v1-f16.gguf"]
    assert refused == [
        "refused tiny-v1-q8_0.gguf: its check gguf_matches_safetensors failed (its logits differ by 0.31 of "
        "the largest, over the q8_0 tolerance 0.08); fix the export or leave q8_0 out of export.gguf_types, "
        "rematerialise gguf_model, then push again"
    ]
    # The upload folder `tunegraph push` fills holds the model and the file that passed, not the other.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    staged = hub.stage_upload(model_dir, "# card", files, paths.hub_upload("tiny", "1"))
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "model.safetensors", "tiny-v1-f16.gguf"]
    # Another version's export is not this version's: nothing to upload, nothing refused.
    assert gguf_files(paths, "tiny", "2") == ([], [])


def test_a_gguf_file_whose_tokenizer_differs_is_refused_even_within_the_logit_tolerance(tmp_path: Path):
    files, refused = hub.gguf_uploads(tmp_path, [_check("f16", 0.001, tokenizer_matches=False)])
    assert files == [] and len(refused) == 1
    assert "tiny-v1-f16.gguf: its check gguf_matches_safetensors failed (its tokenizer reads" in refused[0]
