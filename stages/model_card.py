"""The model card: a Hugging Face `README.md` for every registered version.

Written twice for each version, from the same facts (`card.json` beside the model):
1. when the version is registered (`fine_tuned_model`, `preference_model`): base model, licence,
   training data summary (the dataset card), training settings and losses, the decoding saved in
   `generation_config.json`, and the lineage (landing-file content hashes, Dagster data
   versions, config hash, Dagster run, MLflow run); the evaluation section says it is pending;
2. by `model_evaluation`, with the comparison against the prompting baselines (and the champion)
   and the promotion decision; this one replaces the first in the version's MLflow artifacts.

The YAML header is `huggingface_hub.ModelCardData` (licence, base model, model-index results), so
the hub renders and indexes the card as it does its own.
"""

from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub import EvalResult, ModelCard, ModelCardData

# What the hub calls the bundled base models, and their licences (the GGUF's general.license).
BUNDLED = {
    "bundled:smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "bundled:tiny-random": (None, "apache-2.0"),  # random weights with SmolLM2's tokenizer (Apache-2.0)
}
METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate")
FILE = "README.md"  # where the hub (and every model folder here) keeps the card


def base_identity(base: str) -> tuple[str | None, str]:
    """(hub id or None, licence) of a `model.base` value; a hub id or folder keeps its own licence."""
    if base in BUNDLED:
        return BUNDLED[base]
    is_hub_id = not base.startswith((".", "/", "~")) and base.count("/") == 1
    return (base if is_hub_id else None), "other"


def render(facts: dict[str, Any], evaluation: dict[str, Any] | None = None) -> str:
    """The card as README.md text; `evaluation` adds the comparison with the baselines."""
    name, version = facts["model_name"], facts["version"]
    hub_id, licence = base_identity(facts["base_model"])
    results = (evaluation or {}).get("results", {})
    scored = results.get(evaluation["candidate"]) if evaluation else None
    data = ModelCardData(
        license=licence,
        base_model=hub_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["tunegraph", facts["method"], "mlflow"],
        model_name=f"{name} v{version}",
        eval_results=_eval_results(scored, name) if scored else None,
    )
    sections = [
        f"# {name} v{version}",
        _summary(facts),
        _usage(facts),
        _decoding(facts["decoding"]),
        "## Training data\n\n" + _demote(facts["data_summary"]),
        _training(facts),
        _evaluation(evaluation),
        _lineage(facts),
        f"## Licence\n\n`{licence}`: "
        + (
            f"that of the base model, `{facts['base_model']}`."
            if licence != "other"
            else f"set by the base model, `{facts['base_model']}`: check its own card before sharing this one."
        ),
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    return str(card)


def body(text: str) -> str:
    """The card without its YAML header: what a markdown viewer (the Dagster UI) should show."""
    return ModelCard(text).text


def write(text: str, folder: Path) -> Path:
    path = folder / FILE
    path.write_text(text)
    return path


METHODS = {
    "sft": "supervised fine-tune (SFT)",
    "dpo": "preference-tuned (DPO) version",
    "kto": "preference-tuned (KTO, from answers labelled desirable or not) version",
    "grpo": "RL-aligned (GRPO against a learnt reward model) version",
    "rloo": "RL-aligned (RLOO against a learnt reward model) version",
}


def _summary(facts: dict[str, Any]) -> str:
    training = facts["training"]
    return (
        f"A {METHODS[facts['method']]} of `{facts['base_model']}`"
        + (
            f" (starting from `{facts['trained_from']}`)"
            if facts["trained_from"] != facts["base_model"]
            else ""
        )
        + f", {training['steps']} steps, made by tunegraph and registered in MLflow as "
        f"`models:/{facts['model_name']}/{facts['version']}`."
    )


def _usage(facts: dict[str, Any]) -> str:
    name, version = facts["model_name"], facts["version"]
    return f"""## How to use

The folder loads with plain transformers; `generate` reads the evaluated decoding from
`generation_config.json`, and the chat template is the one training used.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("MODEL_DIR")
model = AutoModelForCausalLM.from_pretrained("MODEL_DIR")
messages = [{{"role": "user", "content": "What does json.dumps do?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
answer = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]
print(tokenizer.decode(answer, skip_special_tokens=True))
```

Or `tunegraph chat --model {version} "What does json.dumps do?"`, or serve it with MLflow and
send OpenAI-style chat requests:

```bash
mlflow models serve -m models:/{name}/{version} --env-manager local -p 5001
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
  -d '{{"messages": [{{"role": "user", "content": "What does json.dumps do?"}}]}}'
```"""


def _decoding(decoding: dict[str, Any]) -> str:
    rows = {
        "strategy": "greedy (do_sample false)",
        "repetition_penalty": decoding["repetition_penalty"],
        "max_new_tokens": decoding["max_new_tokens"],
        "eos_token": f"`{decoding['eos_token']}`",
        "pad_token": f"`{decoding['pad_token']}`",
    }
    table = pd.DataFrame({"setting": list(rows), "value": list(rows.values())}).to_markdown(index=False)
    return (
        "## Decoding\n\nWhat the evaluation measured, saved in `generation_config.json` (serve with it to get "
        f"the evaluated answers):\n\n{table}"
    )


def _training(facts: dict[str, Any]) -> str:
    t = facts["training"]
    rows = {k: t.get(k) for k in ("method", "steps", "learning_rate", "batch_size", "block_size", "lora")}
    rows["final train loss"] = _number(t.get("train_loss"))
    rows["held-out loss (last eval)"] = _number(t.get("eval_loss"))
    rows = {k: f"`{v}`" if isinstance(v, dict) else v for k, v in rows.items() if v is not None}
    table = pd.DataFrame({"setting": list(rows), "value": list(rows.values())}).to_markdown(index=False)
    return f"## Training\n\n{table}"


def _evaluation(evaluation: dict[str, Any] | None) -> str:
    if evaluation is None:
        return "## Evaluation\n\nNot evaluated yet: `model_evaluation` adds the comparison with the baselines here."
    rows = [{"variant": v, **{m: s.get(m) for m in METRICS}} for v, s in evaluation["results"].items() if s]
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f", missingval="n/a")
    verdict = "promoted to `champion`" if evaluation["promoted"] else "not promoted"
    return (
        f"## Evaluation\n\n{evaluation['examples']} held-out examples, greedy decoding as above; this model is "
        f"`{evaluation['candidate']}`. Base-model variants are prompting baselines (zero-shot, a system prompt, "
        f"few-shot); `champion` is the version it was compared with.\n\n{table}\n\n"
        f"Promotion ({evaluation['primary_metric']}): {verdict}, {evaluation['reason']}."
    )


def _lineage(facts: dict[str, Any]) -> str:
    lineage = facts["lineage"]
    files = pd.DataFrame(
        [
            {"landing file": f, "content hash": f"`{v['content_hash']}`", "train records": v["train_records"]}
            for f, v in sorted(lineage["landing_files"].items())
        ]
    )
    versions = "\n".join(f"- `{asset}`: `{v}`" for asset, v in sorted(lineage["data_versions"].items()))
    return (
        "## Lineage\n\n"
        f"- MLflow run: `{lineage['mlflow_run_id']}`\n"
        f"- Dagster run: `{lineage['dagster_run_id']}`\n"
        f"- config hash: `{lineage['config_hash']}`\n\n"
        f"Data versions (Dagster):\n\n{versions or '- (none recorded)'}\n\n"
        f"Landing files it was trained on:\n\n{files.to_markdown(index=False) if len(files) else '(none)'}"
    )


def _eval_results(scores: dict[str, Any], name: str) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type="held-out",
            dataset_name=f"{name} held-out split",
            metric_type=metric,
            metric_value=round(scores[metric], 4),
        )
        for metric in ("perplexity", "rouge_l")
        if scores.get(metric) is not None
    ]


def _demote(markdown: str) -> str:
    """A section's own headings one level down, under the card's `##` section."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"
