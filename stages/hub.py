"""A registered version pushed to a Hugging Face Hub model repository (`tunegraph push`).

    folder = stage_upload(model_dir, card_text, gguf_files, dest)   # exactly what would be uploaded
    url = push(folder, "your-name/stdlib-docs-smollm2", private=True)

The folder is what a hub model repository holds: config and safetensors weights, the tokenizer
and chat template, generation_config.json (the evaluated decoding), README.md (the model card,
with the evaluation) and the GGUF files exported for this version, if any. Authentication is
huggingface_hub's own: the `HF_TOKEN` variable or `hf auth login`; `HF_ENDPOINT` points at
another hub.
"""

import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

# The hub's HTTP errors, and the bases they share with its HTTP client's own (connection refused,
# DNS, timeouts) and with a missing token (OSError): every way a push fails for want of the hub.
_HUB_ERRORS = (HfHubHTTPError, *HfHubHTTPError.__bases__)


class HubError(RuntimeError):
    """The hub could not be reached or refused the push; the message says what to check."""


def gguf_uploads(folder: Path, checks: list[dict[str, Any]]) -> tuple[list[Path], list[str]]:
    """(the GGUF files in `folder` whose gguf_matches_safetensors check passed, one line per file
    refused). A file that fails does not reproduce the model: it is never uploaded, and never in silence."""
    passed, refused = [], []
    for check in checks:
        if check["passed"]:
            passed.append(folder / check["file"])
            continue
        why = (
            "its tokenizer reads the check texts into other token ids"
            if not check["tokenizer_matches"]
            else f"its logits differ by {check['relative_diff']:.4g} of the largest, over the "
            f"{check['kind']} tolerance {check['tolerance']:.4g}"
        )
        refused.append(
            f"refused {check['file']}: its check gguf_matches_safetensors failed ({why}); fix the export "
            f"or leave {check['kind']} out of export.gguf_types, rematerialise gguf_model, then push again"
        )
    return passed, refused


def stage_upload(model_dir: Path, card: str, gguf_files: list[Path], dest: Path) -> Path:
    """Fill `dest` (emptied first) with the model folder's files, the card as README.md and the GGUF files."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name != "README.md":
            shutil.copy2(path, dest / path.name)
    (dest / "README.md").write_text(card)
    for path in gguf_files:
        shutil.copy2(path, dest / path.name)
    return dest


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Create the model repository if needed and upload `folder` as one commit; returns its URL."""
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"tunegraph push of {folder.name}",
        )
    except _HUB_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(
            f"could not push to {constants.ENDPOINT}/{repo_id}: {first}; check the network, that HF_TOKEN "
            f"(or `hf auth login`) may write to {repo_id.split('/')[0]}, and HF_ENDPOINT"
        ) from err
    return commit.commit_url
