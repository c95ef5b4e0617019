"""The `prompts:` and `prompt_search:` sections of the pipeline YAML: prompt variants as data.

A variant is what the four prompt techniques need: a system message (be specific), an
instruction template (specificity), retrieved context (give context), examples (show examples);
`prompt_search` is the fourth, refine iteratively, automated on a dev split. Each variant is
scored on every model kind it names, one Dagster partition each (`assets/prompts.py`).

    prompts:
      - name: retrieved_context
        system: You are an expert Python developer.
        template: "Reference documentation of related objects:\\n{context}\\n\\n{instruction}"
        context: {k: 2}
        models: [base, fine_tuned]
"""

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What a template may name: the record's last user turn as written (its instruction, with its
# input) and the retrieved training records (only with `context`).
PLACEHOLDERS = ("instruction", "context")
MODEL_KINDS = ("base", "fine_tuned", "champion")
# The variant every model row is scored with (the records' own prompts): promotion compares on it.
PLAIN = "zero_shot"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContextSpec(_Section):
    """Top-k most similar training records (TF-IDF cosine on their prompts), shown as reference text."""

    k: int = Field(ge=1, le=8, description="Training records retrieved per question.")
    max_chars: int = Field(
        400,
        ge=50,
        description="Each retrieved answer is cut to this many characters (prompt length is the cost).",
    )


class ExamplesSpec(_Section):
    """Worked examples shown as earlier conversation turns (few-shot)."""

    k: int = Field(ge=1, le=8, description="Training examples per question.")
    select: Literal["random", "similar"] = Field(
        "random",
        description="random: the same k short examples for every question (stable hash); similar: the k "
        "most similar training records to each question (TF-IDF).",
    )


class PromptVariant(_Section):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,39}$", description="Lower-case identifier; the partition key."
    )
    system: str | None = Field(
        None, description="System message; None keeps the record's own (if it has one)."
    )
    template: str = Field(
        "{instruction}",
        description="The user turn; placeholders {instruction} (the record's question) and {context}.",
    )
    context: ContextSpec | None = Field(None, description="Retrieved training records; needs {context}.")
    examples: ExamplesSpec | None = Field(None, description="Few-shot examples as earlier turns.")
    models: list[Literal["base", "fine_tuned", "champion"]] = Field(
        ["base"], min_length=1, description="The model kinds this variant is scored on."
    )

    @field_validator("template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            names = [name for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        except ValueError as err:  # an unmatched brace
            raise ValueError(f"not a template ({err}); write literal braces as {{{{ and }}}}") from None
        bad = sorted({n for n in names if n not in PLACEHOLDERS})
        if bad:
            raise ValueError(f"unknown placeholder(s) {', '.join('{' + n + '}' for n in bad)}; "
                             f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")  # fmt: skip
        if "instruction" not in names:
            raise ValueError("the template must contain {instruction} (the record's question)")
        return value

    @model_validator(mode="after")
    def _context_has_a_place(self) -> "PromptVariant":
        has_slot = "{context}" in self.template
        if self.context and not has_slot:
            raise ValueError(f"{self.name}: context is set but the template has no {{context}}; add it")
        if has_slot and not self.context:
            raise ValueError(
                f"{self.name}: the template uses {{context}} but context is not set; add context: {{k: 2}}"
            )
        return self

    def text(self) -> dict[str, object]:
        """What decides this variant's prompts (everything but which models it is scored on)."""
        return self.model_dump(mode="json", exclude={"models"})


DEFAULT_PROMPTS = (
    PromptVariant(name=PLAIN, models=["base", "fine_tuned", "champion"]),
    PromptVariant(
        name="system_prompt",
        system="You are an expert Python developer. Answer with the concise reference documentation of the "
        "Python object you are asked about, in the style of its docstring.",
    ),
    PromptVariant(name="few_shot", examples=ExamplesSpec(k=2)),
)


class PromptSearchConfig(_Section):
    """Iterative refinement, automated: candidate variants scored on a dev split taken from training data."""

    enabled: bool = Field(True, description="Run prompt_search (the base model only).")
    dev_examples: int = Field(
        16, ge=2, description="Training records (originals with a prompt) held aside as the dev split."
    )
    budget: int = Field(
        4, ge=1, description="Candidate variants scored on the dev split (generation is the cost)."
    )
    metric: Literal["rouge_l", "perplexity"] = Field(
        "rouge_l",
        description="What the search maximises (rouge_l) or minimises (perplexity) on the dev split.",
    )
    systems: list[str] = Field(
        default_factory=lambda: [DEFAULT_PROMPTS[1].system or ""],
        min_length=1,
        description="System messages tried ('' = none).",
    )
    examples_k: list[int] = Field([0, 2], description="Numbers of examples tried.")
    example_select: list[Literal["random", "similar"]] = Field(["similar"], min_length=1)
    context_k: list[int] = Field([0, 2], description="Retrieved records tried (0 = no context).")
