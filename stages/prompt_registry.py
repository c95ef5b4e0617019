"""Prompt variants in MLflow's Prompt Registry: one prompt per variant, a version per distinct text.

MLflow registers a new version on every call; a variant's version is ours to keep: the version
whose `tunegraph.variant_hash` tag is the variant's hash is reused (an edit and its undo give two
versions, not three). The best variant per model kind carries the alias `best-<kind>` (one prompt
of the pipeline at a time), so `tunegraph chat --prompt @best-base` finds it.
Alias lookups use MLflow's fluent API: call `MlflowTracking.activate()` first.
"""

import json
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import PromptVersion

from stages.prompt_config import PromptVariant
from stages.prompts import registry_template, variant_hash

HASH_TAG, VARIANT_TAG, PIPELINE_TAG = "tunegraph.variant_hash", "tunegraph.variant", "tunegraph.pipeline"


def prompt_name(registered_model: str, variant: str) -> str:
    """The registry name of a variant: the pipeline's registered model name, then the variant."""
    return f"{registered_model}.{variant}"


def best_alias(model_kind: str) -> str:
    return f"best-{model_kind.replace('_', '-')}"


def register(client: MlflowClient, registered_model: str, variant: PromptVariant) -> PromptVersion:
    """The registry version holding `variant`'s text: an existing one with the same text, else a new one."""
    name, digest = prompt_name(registered_model, variant.name), variant_hash(variant)
    if client.get_prompt(name) is not None:
        same = [v for v in versions(client, name) if v.tags.get(HASH_TAG) == digest]
        if same:
            return same[0]
    return client.register_prompt(
        name,
        registry_template(variant),
        commit_message=f"tunegraph: {variant.name} {digest}",
        tags={
            HASH_TAG: digest,
            VARIANT_TAG: json.dumps(variant.text(), sort_keys=True),
            PIPELINE_TAG: registered_model,
        },  # fmt: skip
    )


def versions(client: MlflowClient, name: str) -> list[PromptVersion]:
    """Every version of a prompt, oldest first."""
    found, token = [], None
    while True:
        page = client.search_prompt_versions(name, max_results=100, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda v: int(v.version))


def set_best(client: MlflowClient, registered_model: str, model_kind: str, version: PromptVersion) -> None:
    """Point `best-<kind>` at `version`, and take it off the pipeline's other prompts."""
    alias = best_alias(model_kind)
    for prompt in client.search_prompts(f"tags.`{PIPELINE_TAG}` = '{registered_model}'"):
        if prompt.name != version.name and _alias_version(prompt.name, alias) is not None:
            client.delete_prompt_alias(prompt.name, alias)
    client.set_prompt_alias(version.name, alias, int(version.version))


def resolve(client: MlflowClient, registered_model: str, ref: str) -> PromptVersion:
    """A registered variant from 'NAME', 'NAME@alias', 'NAME/3' or '@best-base' (any prompt of the pipeline)."""
    if ref.startswith("@"):
        for prompt in client.search_prompts(f"tags.`{PIPELINE_TAG}` = '{registered_model}'"):
            found = _alias_version(prompt.name, ref[1:])
            if found is not None:
                return found
        raise ValueError(f"--prompt {ref}: no prompt of {registered_model} has that alias yet; run "
                         "`tunegraph run` (model_evaluation sets best-base and best-fine-tuned)")  # fmt: skip
    variant, sep, rest = ref.partition("@") if "@" in ref else ref.partition("/")
    name = prompt_name(registered_model, variant)
    if client.get_prompt(name) is None:
        raise ValueError(
            f"--prompt {ref}: no registered prompt {name}; `tunegraph leaderboard` lists the variants"
        )
    if not sep:
        return versions(client, name)[-1]
    found = _alias_version(name, rest) if sep == "@" else client.get_prompt_version(name, rest)
    if found is None:
        raise ValueError(f"--prompt {ref}: {name} has no version {'aliased ' if sep == '@' else ''}{rest}")
    return found


def variant_of(version: PromptVersion) -> PromptVariant:
    """The variant a registered version holds (context and examples included, which the template alone lacks)."""
    return PromptVariant(**json.loads(version.tags[VARIANT_TAG]))


def _alias_version(name: str, alias: str) -> Any:  # noqa: ANN401
    """The version `alias` points at, or None (load_prompt's own allow_missing; no cache: aliases move)."""
    return mlflow.genai.load_prompt(f"prompts:/{name}@{alias}", allow_missing=True, link_to_model=False,
                                    cache_ttl_seconds=0)  # fmt: skip
