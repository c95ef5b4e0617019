"""Preference pairs (prompt, chosen, rejected) for DPO: read, cleaned and checked like the corpus.

Landing files under `landing/preferences/` use the preference schema: `prompt` (a string or chat
messages ending with the user's turn), `chosen` and `rejected` (strings, or chat messages whose
last one is the assistant's). `corpus.fields` maps other names onto these. A canonical pair is a
corpus record whose `messages` are the prompt plus the chosen answer, with `rejected` beside it,
so the corpus's cleaning, PII redaction and decontamination apply to it unchanged.

Without preference files, pairs can be built from the corpus (`preference.synthetic`): the
reference answer is chosen and the fine-tuned model's own answer rejected, when ROUGE-L says
the two differ enough for the reference to be the better one. Such pairs are marked synthetic.
"""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import metrics, pii
from stages.cleaning import CleanResult, Rules, clean_records, normalise
from stages.config import PipelineConfig
from stages.content import file_hash
from stages.decontamination import decontaminate
from stages.readers import (
    RECORD_FIELDS,
    BadRecordError,
    ReadResult,
    detect_format,
    iter_rows,
    quarantine_row,
    turns,
)
from stages.split import eval_score


def read_pairs(path: Path, key: str, fmt: str = "auto", fields: dict[str, str] | None = None) -> ReadResult:
    """Read one preference file into canonical pairs plus quarantined rows (with reasons)."""
    result = ReadResult()
    for line, raw in iter_rows(path, detect_format(path, fmt), result, key):
        try:
            result.records.append(to_pair(raw, key, line, fields or {}))
        except BadRecordError as err:
            result.quarantine.append(quarantine_row(key, line, err.reason, err.detail, raw))
    return result


def to_pair(raw: Any, key: str, line: int, fields: dict[str, str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRecordError("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    row = {**raw, **{c: raw[source] for c, source in fields.items() if c in RECORD_FIELDS and source in raw}}
    for name in ("prompt", "chosen", "rejected"):
        if row.get(name) is None:
            raise BadRecordError(
                "missing_field", f"'{name}' is missing (preference schema: prompt, chosen, rejected)"
            )
    rid = row.get("id")
    return {
        "id": str(rid) if isinstance(rid, str | int) and str(rid) else f"{key}:{line}",
        "source_file": key,
        "source_line": line,
        "schema": "preference",
        "messages": [
            *_prompt(row["prompt"], fields),
            {"role": "assistant", "content": _answer(row["chosen"], "chosen", fields)},
        ],
        "rejected": _answer(row["rejected"], "rejected", fields),
        "synthetic": False,
    }


def _prompt(value: Any, fields: dict[str, str]) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = turns(value, fields, "prompt")
    if messages[-1]["role"] != "user":
        raise BadRecordError("wrong_type", "the prompt's last message must be the user's")
    return messages


def _answer(value: Any, name: str, fields: dict[str, str]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        last = turns(value, fields, name)[-1]
        if last["role"] == "assistant":
            return last["content"]
    raise BadRecordError("wrong_type", f"'{name}' should be a string or messages ending with the assistant's")


def clean_pairs(pairs: list[dict[str, Any]], rules: Rules) -> CleanResult:
    """The corpus's cleaning on prompt + chosen, then the pair's own rules on the rejected answer."""
    cleaned = clean_records(pairs, rules)
    result = CleanResult(dropped=cleaned.dropped, pii=cleaned.pii)
    for pair in cleaned.kept:
        rejected = pii.redact(normalise(pair["rejected"]), result.pii)
        chosen = pair["messages"][-1]["content"]
        reason = None
        if not rejected:
            reason = "empty_rejected"
        elif rejected == chosen:
            reason = "chosen_equals_rejected"
        elif len(rejected) > rules.max_chars:
            reason = "too_long"
        if reason is None:
            result.kept.append({**pair, "rejected": rejected})
        else:
            result.dropped.append({"source_file": pair["source_file"], "source_line": pair["source_line"],
                                   "detail": pair["id"], "reason": reason, "raw": rejected[:500]})  # fmt: skip
    return result


def synthetic_pairs(
    records: list[dict[str, Any]], generated: list[str], max_rouge_l: float
) -> list[dict[str, Any]]:
    """Reference answer chosen, the model's answer rejected, where they differ (ROUGE-L below max).

    A blank answer (the model said nothing, or only whitespace) is kept as an empty rejected
    answer: answering is preferred to staying silent. Answers are PII-redacted like the corpus.
    """
    pairs = []
    for record, answer in zip(records, generated, strict=True):
        if record.get("schema") == "text":
            continue  # a document answers no prompt: there is no preference to learn
        reference = record["messages"][-1]["content"]
        if metrics.rouge_l(answer, reference) >= max_rouge_l:
            continue  # the model already answers like the reference: no preference to learn
        rejected = pii.redact(answer.strip())
        pairs.append({**record, "schema": "preference", "rejected": rejected, "synthetic": True})
    return pairs


def held_in_records(train: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` original (not augmented) train records answering a prompt, in a stable order by hash of
    id: the prompts synthetic pairs and online RL start from. `seed` is data.seed + 11 (apart from the
    split's own hash)."""
    originals = [r for r in train if r["augmentation"] == "none" and r.get("schema") != "text"]
    return sorted(originals, key=lambda r: eval_score(r["id"], seed))[:count]


def rl_prompts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RL stage's prompts (stages/rl.py): the chat messages before the answer, the answer as reference."""
    return [
        {"id": r["id"], "prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]}
        for r in records
    ]


def pair_text(pair: dict[str, Any]) -> str:
    """Everything a pair teaches from: the prompt, the chosen and the rejected answer."""
    return "\n".join([*(m["content"] for m in pair["messages"]), pair["rejected"]])


def dpo_rows(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's conversational preference format."""
    return [
        {
            "prompt": p["messages"][:-1],
            "chosen": [p["messages"][-1]],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]


@dataclass
class PairSet:
    """The pairs preference_pairs keeps, those it does not (each with a reason), and its summary."""

    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    summary: dict[str, Any]


def build_pairs(
    files: dict[Path, str],
    synthetic: list[dict[str, Any]] | None,
    cfg: PipelineConfig,
    eval_rows: list[dict[str, Any]],
) -> PairSet:
    """Landed pairs (`files`: path -> key under landing/) read and cleaned like the corpus, or the
    synthetic pairs as built; then decontaminated against every eval record when that is on."""
    pairs, quarantine = [], []
    for path, key in files.items():
        read = read_pairs(path, key, cfg.corpus.format, cfg.corpus.fields)
        pairs += read.records
        quarantine += read.quarantine
    if files:
        cleaned = clean_pairs(pairs, Rules(**cfg.data.cleaning.model_dump()))
        kept, dropped, pii_counts = cleaned.kept, cleaned.dropped, dict(cleaned.pii)
    else:  # built from records that were cleaned as corpus; the model's answers were redacted
        pairs = synthetic or []
        kept, dropped, pii_counts = pairs, [], {}
    if cfg.data.decontamination.enabled:
        kept, contaminated = decontaminate(kept, eval_rows, cfg.data.decontamination.ngram, text=pair_text)
        dropped += [{"source_file": c["source_file"], "source_line": c["source_line"], "detail": c["id"],
                     "reason": "contaminated", "raw": c["shared_ngram"]} for c in contaminated]  # fmt: skip
    summary = {
        "enabled": True,
        "synthetic": not files,
        "files": [p.name for p in files],
        "pairs_in": len(pairs) + len(quarantine),
        "pairs": len(kept),
        "dropped": dict(Counter(r["reason"] for r in quarantine + dropped)),
        "pii": pii_counts,
        # What the DPO model's lineage records: each preference file's content and pairs kept from it.
        "landing_files": {
            key: {
                "content_hash": file_hash(path),
                "train_records": sum(p["source_file"] == key for p in kept),
            }
            for path, key in files.items()
        },
    }
    return PairSet(kept, quarantine + dropped, summary)
