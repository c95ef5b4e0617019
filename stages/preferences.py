"""Preference pairs (prompt, chosen, rejected) for DPO: read, cleaned and checked like the corpus.

Landing files under `landing/preferences/` use the preference schema: `prompt` (a string or chat
messages ending with the user's turn), `chosen` and `rejected` (strings, or chat messages whose
last one is the assistant's). `corpus.fields` maps other names onto these. A canonical pair is a
corpus record whose `messages` are the prompt plus the chosen answer, with `rejected` beside it,
so the corpus's cleaning, PII redaction and decontamination apply to it unchanged.

Without preference files, pairs can be built from the corpus (`preference.synthetic`): the
reference answer is chosen and the fine-tuned model's own answer rejected, when ROUGE-L says
the two differ enough for the reference to be the better one. Such pairs are marked synthetic.

Besides pairs, a landing file may hold (row by row, formats mixed freely):
- ranked lists: `prompt`, `responses` (two or more answers) and `ranks` (1 = best, one per answer),
  expanded to a pair for every two answers where one ranks strictly better (ties make no pair);
- thumbs up/down on single answers: `prompt`, `completion` (or `response`) and `label: true|false`
  (or `thumbs: up|down`), kept as unpaired labelled rows (KTO's data) and, where one prompt has both
  an up and a down answer, turned into pairs (every up answer chosen over every down one).
Every pair says where it came from (`origin`: pair, ranked, thumbs or synthetic) and carries a
`split_id`: the pairs of one ranked list, or of one prompt's thumbs, share it, so the reward
model's held-out split never holds a pair whose sibling it trained on.
"""

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
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

# The preference schema's own names, which corpus.fields may map other column names onto.
PREFERENCE_FIELDS = (*RECORD_FIELDS, "responses", "ranks", "response", "label", "thumbs")
# True and False also match 1 and 0 (equal hashes): a CSV's or Parquet's integer labels read as votes.
LABELS = {
    True: True,
    False: False,
    "true": True,
    "false": False,
    "up": True,
    "down": False,
    "1": True,
    "0": False,
}


@dataclass
class PreferenceRead(ReadResult):
    """One preference file read: pairs (`records`, ranked lists expanded), unpaired thumbs rows, quarantine."""

    unpaired: list[dict[str, Any]] = field(default_factory=list)


def read_pairs(
    path: Path, key: str, fmt: str = "auto", fields: dict[str, str] | None = None
) -> PreferenceRead:
    """Read one preference file into canonical pairs, unpaired labelled rows and quarantined rows (with reasons)."""
    result = PreferenceRead()
    for line, raw in iter_rows(path, detect_format(path, fmt), result, key):
        try:
            pairs, unpaired = to_rows(raw, key, line, fields or {})
        except BadRecordError as err:
            result.quarantine.append(quarantine_row(key, line, err.reason, err.detail, raw))
            continue
        result.records += pairs
        result.unpaired += unpaired
    return result


def to_rows(raw: Any, key: str, line: int, fields: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(pairs, unpaired rows) from one row of a preference file, by its shape: a pair, a ranked list or a thumb."""
    if not isinstance(raw, dict):
        raise BadRecordError("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    row = {
        **raw,
        **{c: raw[source] for c, source in fields.items() if c in PREFERENCE_FIELDS and source in raw},
    }
    if _has(row, "responses") or _has(row, "ranks"):
        return ranked_pairs(row, key, line, fields), []
    if _has(row, "label") or _has(row, "thumbs"):
        return [], [unpaired_row(row, key, line, fields)]
    return [to_pair(row, key, line, fields)], []


def _has(row: dict[str, Any], name: str) -> bool:
    """A value is given (a CSV's empty cell is none)."""
    return row.get(name) is not None and row.get(name) != ""


def to_pair(raw: Any, key: str, line: int, fields: dict[str, str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRecordError("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    row = {**raw, **{c: raw[source] for c, source in fields.items() if c in RECORD_FIELDS and source in raw}}
    for name in ("prompt", "chosen", "rejected"):
        if row.get(name) is None:
            raise BadRecordError(
                "missing_field",
                f"'{name}' is missing (preference schema: prompt with chosen and rejected, or responses with "
                "ranks, or completion with label)",
            )
    rid = _row_id(row, key, line)
    return _pair(rid, rid, key, line, _prompt(row["prompt"], fields),
                 _answer(row["chosen"], "chosen", fields), _answer(row["rejected"], "rejected", fields), "pair")  # fmt: skip


def ranked_pairs(row: dict[str, Any], key: str, line: int, fields: dict[str, str]) -> list[dict[str, Any]]:
    """Every pair of a ranked list where one answer ranks strictly better (1 = best); ties make no pair.

    A list is refused whole (quarantined with a reason) when it is malformed: no prompt, fewer than two
    answers, ranks that are not positive integers or not one per answer, or every answer tied."""
    if row.get("prompt") is None:
        raise BadRecordError("missing_field", "'prompt' is missing (a ranked list: prompt, responses, ranks)")
    responses, ranks = _listed(row.get("responses"), "responses"), _listed(row.get("ranks"), "ranks")
    if len(responses) < 2:
        raise BadRecordError(
            "too_few_responses", f"{len(responses)} responses: a ranked list needs two or more"
        )
    if len(ranks) != len(responses):
        raise BadRecordError(
            "ranks_mismatch", f"{len(responses)} responses but {len(ranks)} ranks: give one rank each"
        )
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
        raise BadRecordError("bad_rank", f"ranks {ranks}: each must be an integer >= 1 (1 = best)")
    if len(set(ranks)) == 1:
        raise BadRecordError(
            "all_tied", f"every response ranks {ranks[0]}: a list of ties says no preference"
        )
    prompt = _prompt(row["prompt"], fields)
    answers = [_answer(r, f"responses[{i}]", fields) for i, r in enumerate(responses)]
    rid = _row_id(row, key, line)
    return [
        _pair(f"{rid}:{i}>{j}", rid, key, line, prompt, answers[i], answers[j], "ranked")
        for i in range(len(answers))
        for j in range(len(answers))
        if ranks[i] < ranks[j]
    ]


def unpaired_row(row: dict[str, Any], key: str, line: int, fields: dict[str, str]) -> dict[str, Any]:
    """A single answer with a thumbs up (label True) or down (False): KTO's unpaired data."""
    if row.get("prompt") is None:
        raise BadRecordError("missing_field", "'prompt' is missing (a thumbs row: prompt, completion, label)")
    answer = row["completion"] if _has(row, "completion") else row.get("response")
    if answer is None:
        raise BadRecordError(
            "missing_field", "'completion' (or 'response') is missing from a labelled answer"
        )
    given = row["label"] if _has(row, "label") else row.get("thumbs")
    label = LABELS.get(given.lower() if isinstance(given, str) else given)
    if label is None:
        raise BadRecordError("bad_label", f"label {given!r}: use true or false (or thumbs: up or down)")
    return {
        "id": _row_id(row, key, line),
        "source_file": key,
        "source_line": line,
        "schema": "unpaired",
        "messages": [
            *_prompt(row["prompt"], fields),
            {"role": "assistant", "content": _answer(answer, "completion", fields)},
        ],
        "label": label,
        "synthetic": False,
    }


def _listed(value: Any, name: str) -> list[Any]:
    """A list column: a list, or (from CSV) a string holding a JSON list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise BadRecordError("wrong_type", f"'{name}' is not a valid JSON list ({err.msg})") from None
    if not isinstance(value, list):
        raise BadRecordError("wrong_type", f"'{name}' should be a list, got {type(value).__name__}")
    return value


def _row_id(row: dict[str, Any], key: str, line: int) -> str:
    rid = row.get("id")
    return str(rid) if isinstance(rid, str | int) and str(rid) else f"{key}:{line}"


def _pair(pid: str, split_id: str, key: str, line: int, prompt: list[dict[str, str]], chosen: str,
          rejected: str, origin: str) -> dict[str, Any]:  # fmt: skip
    """A canonical pair: a corpus record (prompt + chosen) with the rejected answer beside it."""
    return {
        "id": pid,
        "split_id": split_id,
        "source_file": key,
        "source_line": line,
        "schema": "preference",
        "origin": origin,
        "messages": [*prompt, {"role": "assistant", "content": chosen}],
        "rejected": rejected,
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
        pairs.append({**record, "split_id": record["id"], "schema": "preference", "origin": "synthetic",
                      "rejected": rejected, "synthetic": True})  # fmt: skip
    return pairs


def clean_unpaired(rows: list[dict[str, Any]], rules: Rules) -> CleanResult:
    """A thumbs-up answer is cleaned like a corpus record (it is taught as a good answer); a thumbs-down
    one like a rejected answer (redacted, dropped only when empty or too long: a bad answer may be short).
    Rows keep their order."""
    result = CleanResult()
    for row in rows:
        if row["label"]:
            up = clean_records([row], rules)
            result.kept += up.kept
            result.dropped += up.dropped
            result.pii.update(up.pii)
            continue
        messages = [{"role": m["role"], "content": pii.redact(normalise(m["content"]), result.pii)}
                    for m in row["messages"]]  # fmt: skip
        answer = messages[-1]["content"]
        reason = None
        if not answer or not messages[-2]["content"]:
            reason = "empty"
        elif len(answer) > rules.max_chars:
            reason = "too_long"
        if reason is None:
            result.kept.append({**row, "messages": messages})
        else:
            result.dropped.append({"source_file": row["source_file"], "source_line": row["source_line"],
                                   "detail": row["id"], "reason": reason, "raw": answer[:500]})  # fmt: skip
    return result


def thumbs_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs from thumbs: for each prompt with both, every up answer chosen over every down one (distinct answers)."""
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(json.dumps(row["messages"][:-1], sort_keys=True), []).append(row)
    pairs = []
    for group in by_prompt.values():
        split_id = prompt_split_id(group[0]["messages"][:-1])
        for up in (r for r in group if r["label"]):
            for down in (r for r in group if not r["label"]):
                if up["messages"][-1]["content"] == down["messages"][-1]["content"]:
                    continue  # the same answer voted both ways says nothing
                pairs.append(_pair(f"{up['id']}>{down['id']}", split_id, up["source_file"], up["source_line"],
                                   up["messages"][:-1], up["messages"][-1]["content"],
                                   down["messages"][-1]["content"], "thumbs"))  # fmt: skip
    return pairs


def prompt_split_id(prompt: list[dict[str, str]]) -> str:
    """The split id of one prompt's thumbs (their pairs and the single answers): one side of the split."""
    return "prompt:" + hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def kto_training_rows(
    train_pairs: list[dict[str, Any]], thumbs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """KTO's rows (TRL's conversational unpaired format): every thumbs-up/down answer, and every pair not
    made of thumbs taken apart (chosen desirable, rejected not); thumbs pairs would count their answers twice."""
    taken_apart = [
        {"messages": [*p["messages"][:-1], {"role": "assistant", "content": answer}], "label": label}
        for p in train_pairs
        if p.get("origin") != "thumbs"
        for answer, label in ((p["messages"][-1]["content"], True), (p["rejected"], False))
    ]
    return kto_rows([*thumbs, *taken_apart])


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


def unpaired_text(row: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in row["messages"])


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


def kto_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's conversational unpaired preference format (KTO): prompt, completion, label."""
    return [
        {"prompt": r["messages"][:-1], "completion": [r["messages"][-1]], "label": r["label"]} for r in rows
    ]


# Added to data.seed for the pairs' split. With the corpus's own seed, synthetic pairs (built from train
# records, whose hash is >= data.eval_fraction by construction) would hold out a share of
# (heldout_fraction - eval_fraction) / (1 - eval_fraction) only: 11 % instead of 20 % at the tiny config's
# 0.1. Not 11 either: the synthetic pairs' records are those with the lowest hash under data.seed + 11.
PAIR_SPLIT_SALT = 23


def split_pairs(
    pairs: list[dict[str, Any]], heldout_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) by the corpus's stable hash (stages/split.py) of each pair's split id: adding
    pairs never moves one across, and the pairs of one ranked list or one prompt's thumbs stay together."""
    train, held_out = [], []
    for pair in pairs:
        score = eval_score(pair.get("split_id") or pair["id"], seed + PAIR_SPLIT_SALT)
        (held_out if score < heldout_fraction else train).append(pair)
    return train, held_out


@dataclass
class PairSet:
    """The pairs preference_pairs keeps, those it does not (each with a reason), the unpaired thumbs rows
    it keeps, and its summary."""

    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    summary: dict[str, Any]
    unpaired: list[dict[str, Any]] = field(default_factory=list)


def build_pairs(
    files: dict[Path, str],
    synthetic: list[dict[str, Any]] | None,
    cfg: PipelineConfig,
    eval_rows: list[dict[str, Any]],
) -> PairSet:
    """Landed pairs, ranked lists and thumbs (`files`: path -> key under landing/) read and cleaned like the
    corpus, or the synthetic pairs as built; thumbs with both an up and a down answer to one prompt become
    pairs too; then everything is decontaminated against every eval record when that is on."""
    pairs, unpaired, quarantine = [], [], []
    for path, key in files.items():
        read = read_pairs(path, key, cfg.corpus.format, cfg.corpus.fields)
        pairs += read.records
        unpaired += read.unpaired
        quarantine += read.quarantine
    rows_in = len(pairs) + len(unpaired) + len(quarantine)
    if files:
        rules = Rules(**cfg.data.cleaning.model_dump())
        cleaned, thumbs = clean_pairs(pairs, rules), clean_unpaired(unpaired, rules)
        kept, dropped = cleaned.kept + thumbs_pairs(thumbs.kept), cleaned.dropped + thumbs.dropped
        unpaired, pii_counts = thumbs.kept, dict(cleaned.pii + thumbs.pii)
    else:  # built from records that were cleaned as corpus; the model's answers were redacted
        pairs = synthetic or []
        kept, dropped, pii_counts = pairs, [], {}
    if cfg.data.decontamination.enabled:
        n = cfg.data.decontamination.ngram
        kept, contaminated = decontaminate(kept, eval_rows, n, text=pair_text)
        unpaired, tainted = decontaminate(unpaired, eval_rows, n, text=unpaired_text)
        dropped += [{"source_file": c["source_file"], "source_line": c["source_line"], "detail": c["id"],
                     "reason": "contaminated", "raw": c["shared_ngram"]} for c in contaminated + tainted]  # fmt: skip
    summary = {
        "enabled": True,
        "synthetic": not files,
        "files": [p.name for p in files],
        "pairs_in": rows_in if files else len(pairs),
        "pairs": len(kept),
        "origins": dict(Counter(p.get("origin", "pair") for p in kept)),
        "unpaired": len(unpaired),
        "unpaired_labels": {
            "up": sum(r["label"] for r in unpaired),
            "down": sum(not r["label"] for r in unpaired),
        },
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
    return PairSet(kept, quarantine + dropped, summary, unpaired)
