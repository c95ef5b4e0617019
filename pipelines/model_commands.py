"""`tunegraph chat` and `tunegraph push`: a registered version, used and taken away.

    tunegraph chat "What does json.dumps do?"        # the champion answers, token by token
    tunegraph chat --model 3                          # an interactive session with version 3
    tunegraph chat --model base --prompt @best-base "What does json.dumps do?"
    tunegraph push your-name/stdlib-docs --dry-run    # fill the upload folder and list it

Both resolve `--model` (an alias or a version number) in the MLflow registry and use the
version's local model folder (downloaded from MLflow once if its published folder was pruned).
"""

import sys
from collections.abc import Callable
from pathlib import Path

import mlflow

from resources.settings import Paths
from resources.tracking import MlflowTracking
from stages import hub, prompt_registry
from stages.config import load_config
from stages.inference import inference_placement, load_saved
from stages.prompts import conversations, example_pool
from stages.serving import stream_reply
from stages.tables import read_json, read_rows


def chat(
    paths: Paths,
    config: Path,
    model_ref: str,
    question: str | None,
    system: str | None,
    prompt_ref: str | None = None,
) -> int:
    """One answer to `question`, or an interactive session (history kept) when there is none; with
    `prompt_ref` each question is asked through that registered prompt variant."""
    if system and prompt_ref:
        print("error: --system and --prompt both set the system message; use one", file=sys.stderr)
        return 2
    try:
        label, folder = chat_model(paths, config, model_ref)
        asked = prompted(paths, config, prompt_ref) if prompt_ref else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # Where training ran, in its precision: the answers the evaluation measured.
    model, tokenizer = load_saved(folder, inference_placement(load_config(config)))
    opening = [{"role": "system", "content": system}] if system else []

    def messages(history: list[dict[str, str]], text: str) -> list[dict[str, str]]:
        turns = [*opening, *history, {"role": "user", "content": text}]
        return asked(turns) if asked else turns

    if question:
        stream_reply(model, tokenizer, messages([], question), write=_write)
        print()
        return 0
    print(f"{label}, with its chat template and saved decoding; an empty line or Ctrl-D ends")
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
        reply = stream_reply(model, tokenizer, messages(history, question), write=_write)
        print()
        history += [turn, {"role": "assistant", "content": reply.text}]


def chat_model(paths: Paths, config: Path, model_ref: str) -> tuple[str, Path]:
    """(what answers, its model folder): 'base' is base_model's current output, else a registered version."""
    if model_ref == "base":
        folder = _current_output("base_model")
        if folder is None:
            raise ValueError("--model base: base_model has not been materialised; run `tunegraph run`")
        return "the base model", folder / "model"
    _, version, folder = registered_model(paths, config, model_ref)
    return f"{version.name} v{version.version}", folder


def prompted(
    paths: Paths, config: Path, prompt_ref: str
) -> Callable[[list[dict[str, str]]], list[dict[str, str]]]:
    """The registered prompt `prompt_ref` names, as a function from a conversation to what the model is
    asked (its system message, template, examples and context from the current training data)."""
    tracking = MlflowTracking(home=str(paths.home))
    tracking.activate()
    cfg = load_config(config)
    version = prompt_registry.resolve(tracking.client(), cfg.tracking.registered_model, prompt_ref)
    variant = prompt_registry.variant_of(version)
    pool: list[dict] = []
    if variant.context or variant.examples:
        train = _current_output("augmented_corpus")
        if train is None:
            raise ValueError(
                f"--prompt {prompt_ref} retrieves from the training data: run `tunegraph run` first"
            )
        pool = example_pool(read_rows(train / "train.parquet"))
    print(f"prompt {version.name} v{version.version}", file=sys.stderr)

    def ask(turns: list[dict[str, str]]) -> list[dict[str, str]]:
        record = {"schema": "chat", "messages": [*turns, {"role": "assistant", "content": ""}]}
        return conversations(variant, [record], pool, cfg.data.seed)[0]

    return ask


def _current_output(asset: str) -> Path | None:
    import dagster as dg

    from resources.outputs import output_folder

    with dg.DagsterInstance.get() as instance:
        return output_folder(instance, asset)


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
