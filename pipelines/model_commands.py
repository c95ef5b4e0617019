"""`tunegraph chat` and `tunegraph push`: a registered version, used and taken away.

    tunegraph chat "What does json.dumps do?"        # the champion answers, token by token
    tunegraph chat --model 3                          # an interactive session with version 3
    tunegraph push your-name/stdlib-docs --dry-run    # fill the upload folder and list it

Both resolve `--model` (an alias or a version number) in the MLflow registry and use the
version's local model folder (downloaded from MLflow once if its published folder was pruned).
"""

import sys
from pathlib import Path

import mlflow

from resources.settings import Paths
from resources.tracking import MlflowTracking
from stages import hub
from stages.config import load_config
from stages.inference import inference_placement, load_saved
from stages.serving import stream_reply
from stages.tables import read_json


def chat(paths: Paths, config: Path, model_ref: str, question: str | None, system: str | None) -> int:
    """One answer to `question`, or an interactive session (history kept) when there is none."""
    try:
        _, version, folder = registered_model(paths, config, model_ref)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # Where training ran, in its precision: the answers the evaluation measured.
    model, tokenizer = load_saved(folder, inference_placement(load_config(config)))
    opening = [{"role": "system", "content": system}] if system else []
    if question:
        stream_reply(model, tokenizer, [*opening, {"role": "user", "content": question}], write=_write)
        print()
        return 0
    print(
        f"{version.name} v{version.version}, with its chat template and saved decoding; an empty line or Ctrl-D ends"
    )
    history: list[dict[str, str]] = []
    while True:
        try:
            question = input("> ").strip()
        except EOFError:
            print()
            return 0
        if not question:
            return 0
        turn = {"role": "user", "content": question}
        reply = stream_reply(model, tokenizer, [*opening, *history, turn], write=_write)
        print()
        history += [turn, {"role": "assistant", "content": reply.text}]


def push(paths: Paths, config: Path, model_ref: str, repo: str, private: bool, dry_run: bool) -> int:
    """Fill the upload folder for the version (model, evaluated card, GGUF files whose check passed), then
    push it. A GGUF file whose check failed is refused, with a line on stderr saying what to do."""
    try:
        tracking, version, folder = registered_model(paths, config, model_ref)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    tracking.activate()
    # The card as the registry holds it: with the evaluation, which the model folder's own copy predates.
    card = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}/README.md"))
    gguf, refused = gguf_files(paths, version.name, str(version.version))
    for line in refused:
        print(line, file=sys.stderr)
    staged = hub.stage_upload(folder, card.read_text(), gguf, paths.hub_upload(version.name, version.version))
    print(
        f"{version.name} v{version.version}: {', '.join(sorted(p.name for p in staged.iterdir()))} in {staged}"
    )
    if dry_run:
        return 0
    try:
        url = hub.push(staged, repo, private=private)
    except hub.HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed: {url}")
    return 0


def registered_model(paths: Paths, config: Path, model_ref: str) -> tuple:  # noqa: ANN001
    """(MlflowTracking, the registered version `model_ref` names, its local model folder)."""
    tracking = MlflowTracking(home=str(paths.home))
    name = load_config(config).tracking.registered_model
    version = tracking.resolve_version(model_ref, name, asked_by="--model")
    return tracking, version, tracking.model_dir(version, paths.model_cache(version.name, version.version))


def gguf_files(paths: Paths, name: str, version: str) -> tuple[list[Path], list[str]]:
    """The GGUF files of gguf_model's current output (Dagster's record), when they are of this version
    and passed their check, and a line for each one refused because its check failed."""
    import dagster as dg

    from resources.outputs import output_folder

    with dg.DagsterInstance.get() as instance:
        out = output_folder(instance, "gguf_model")
    if out is None:
        return [], []
    summary = read_json(out / "summary.json")
    if not summary["enabled"] or (summary["model_name"], summary["version"]) != (name, version):
        return [], []
    return hub.gguf_uploads(out, summary["checks"])


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
