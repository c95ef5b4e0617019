"""Chat-template rendering and response-only tokenisation.

Every example is rendered with the base model's chat template; prompts (everything up to and
including each assistant header) are masked out of the labels, every assistant turn is learnt,
and each ends with the EOS token the model stops on at generation time. A `text` record has no
prompt: all of its tokens are learnt (continued pre-training). A tokenizer without a template gets ChatML, which is
saved with the model so evaluation and serving render exactly what training saw.
"""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips


def label_positions(labels: Any) -> dict[str, Any]:
    """For a [batch, time] label tensor: `logits_to_keep`, the positions t whose next token t+1 is
    scored (a boolean mask, transformers' per-row form), and `shift_labels`, those tokens in order.

    Given both, a causal LM projects only the scored positions onto its vocabulary (the logits come
    back flattened, one row per scored token) and its loss equals the full-logits one."""
    scored = labels[:, 1:] != IGNORE_INDEX
    keep = scored.new_zeros(labels.shape)
    keep[:, :-1] = scored
    return {"logits_to_keep": keep, "shift_labels": labels[:, 1:][scored]}


# ChatML, the template of SmolLM2 and many others; documented as tunegraph's default.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give `tokenizer` the default template if it has none. Returns True when it did."""
    if tokenizer.chat_template:
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no EOS token: set one before fine-tuning so the model can stop")
    return True


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """Everything before the final assistant turn."""
    return list(record["messages"][:-1])


def response_text(record: dict[str, Any]) -> str:
    return record["messages"][-1]["content"]


def render_prompts(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Prompt text for each conversation, ending with the assistant header (generation prompt)."""
    return [
        tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) if conv else ""
        for conv in conversations
    ]


def tokenize_records(tokenizer: Any, records: list[dict[str, Any]], batch_size: int = 4096) -> list[dict]:
    """Records -> [{input_ids, labels}] with labels on every assistant turn and its end (EOS).

    A multi-turn dialogue is learnt on all of its assistant turns, not only the last; a `text`
    record (a single assistant message, no prompt) is learnt on all of its tokens.

    Same ids as rendering each prompt and tokenising the segments separately (the reference path,
    `_tokenize_rendered`), but faster: the template is rendered once per role sequence with
    placeholder contents, its constant pieces are tokenised once, every message's content in one
    batched call, and the ids are spliced. A sample is checked against the reference path;
    records whose contents could merge with a neighbouring piece (leading or trailing whitespace)
    take the reference path.
    """
    out: list[dict] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        spliced = _tokenize_spliced(tokenizer, batch)
        if spliced is None:
            out += _tokenize_rendered(tokenizer, batch)
        else:
            out += spliced
    return out


def _segments(tokenizer: Any, record: dict[str, Any]) -> list[tuple[str, bool]]:
    """(text, learnt?) pieces of a record in order: each assistant turn is learnt, with the EOS
    the model stops on; everything before it is the prompt that turn answers, rendered as at
    generation time (ending with the assistant header)."""
    messages = record["messages"]
    segments: list[tuple[str, bool]] = []
    consumed = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_prompts(tokenizer, [messages[:i]])[0]
        if (
            not prefix.startswith(consumed)
            and segments
            and prefix.startswith(consumed[: -len(tokenizer.eos_token)])
        ):
            # The template ends an assistant turn with something else than EOS: learn the text only.
            consumed = consumed[: -len(tokenizer.eos_token)]
            segments[-1] = (segments[-1][0][: -len(tokenizer.eos_token)], True)
        if not prefix.startswith(consumed):
            raise ValueError(
                f"record {record.get('id')}: the chat template renders earlier assistant turns differently "
                "from how it prompts for them, so the turns of a dialogue cannot all be learnt; split "
                "multi-turn records into one record per turn, or use a template that keeps turns verbatim"
            )
        answer = message["content"] + tokenizer.eos_token
        segments += [(prefix[len(consumed) :], False), (answer, True)]
        consumed = prefix + answer
    return segments


def _tokenize_rendered(tokenizer: Any, records: list[dict[str, Any]]) -> list[dict]:
    """The reference path: render each record's segments, tokenise all of them in one batch.

    Each prompt segment ends with the assistant header, so the boundary tokenises as at generation time.
    """
    segmented = [_segments(tokenizer, r) for r in records]
    texts = [text for segments in segmented for text, _ in segments]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    out = []
    for segments in segmented:
        example: dict[str, list[int]] = {"input_ids": [], "labels": []}
        for _, learnt in segments:
            piece = next(ids)
            example["input_ids"] += piece
            example["labels"] += piece if learnt else [IGNORE_INDEX] * len(piece)
        out.append(example)
    return out


_SENTINEL = "\x00tunegraph-content-{}\x00"
_SAMPLE = 32  # records checked against the reference path per batch


def _skeleton(tokenizer: Any, roles: tuple[str, ...]) -> list[list[int]] | None:
    """Token ids of the constant pieces around each message's content, or None if not splittable."""
    conv = [{"role": role, "content": _SENTINEL.format(i)} for i, role in enumerate(roles)]
    rendered = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) if conv else ""
    pieces, rest = [], rendered
    for i in range(len(roles)):
        head, sep, rest = rest.partition(_SENTINEL.format(i))
        if not sep:
            return None  # the template rewrites or drops content: splicing would be wrong
        pieces.append(head)
    pieces.append(rest)
    return [tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in pieces]


def _tokenize_spliced(tokenizer: Any, records: list[dict[str, Any]]) -> list[dict] | None:
    safe = [
        all(m["content"] == m["content"].strip() and m["content"] for m in r["messages"]) and r["messages"]
        for r in records
    ]
    skeletons: dict[tuple[str, ...], list[list[int]] | None] = {}
    contents: list[str] = []
    for r, ok in zip(records, safe, strict=True):
        if not ok:
            continue
        roles = tuple(m["role"] for m in prompt_messages(r))
        if roles not in skeletons:
            skeletons[roles] = _skeleton(tokenizer, roles)
        contents += [m["content"] for m in prompt_messages(r)] + [response_text(r) + tokenizer.eos_token]
    if any(s is None for s in skeletons.values()):
        return None
    content_ids = iter(tokenizer(contents, add_special_tokens=False)["input_ids"]) if contents else iter(())
    out = []
    slow = [r for r, ok in zip(records, safe, strict=True) if not ok]
    slow_ids = iter(_tokenize_rendered(tokenizer, slow)) if slow else iter(())
    for r, ok in zip(records, safe, strict=True):
        if not ok:
            out.append(next(slow_ids))
            continue
        roles = tuple(m["role"] for m in prompt_messages(r))
        pieces = skeletons[roles]
        ids, labels = list(pieces[0]), [IGNORE_INDEX] * len(pieces[0])
        for role, piece in zip(roles, pieces[1:], strict=True):
            content = next(content_ids)
            ids += content + piece
            if role == "assistant":  # an earlier turn is learnt too, with the EOS the template closes it with
                learnt = content + piece[:1] if piece[:1] == [tokenizer.eos_token_id] else content
                labels += learnt + [IGNORE_INDEX] * (len(content) + len(piece) - len(learnt))
            else:
                labels += [IGNORE_INDEX] * (len(content) + len(piece))
        response = next(content_ids)
        out.append({"input_ids": ids + response, "labels": labels + response})
    sample = records[:_SAMPLE]
    if out[: len(sample)] != _tokenize_rendered(tokenizer, sample):
        return None  # this template does not splice cleanly; the caller takes the reference path
    return out


# Which tokens are learnt; part of the fingerprint, so cached token ids follow a change of it.
LABELLING = "every-assistant-turn"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Changes whenever tokenisation could: vocabulary/merges, chat template, EOS, labelling rule."""
    backend = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else json.dumps(tokenizer.get_vocab())
    payload = "\x00".join(
        [type(tokenizer).__name__, backend, tokenizer.chat_template or "", tokenizer.eos_token, LABELLING]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def record_key(record: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(record["messages"], sort_keys=True).encode()).hexdigest()


COMPACT_AFTER = 16  # cache parts; past this, one compacted part replaces them
TOKENIZE_BATCH = 4096  # records tokenised, then held as Python lists, at a time
_CACHE_SCHEMA = pa.schema(
    [("key", pa.string()), ("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64()))]
)


def tokenize_cached(
    tokenizer: Any, records: list[dict[str, Any]], keys: list[str], cache_dir: Path
) -> tuple[pa.Table, int]:
    """`tokenize_records` as an Arrow table (input_ids, labels) in the order of `records`, reusing
    the token ids of records seen before; returns (table, newly tokenised). `keys` are the
    records' `record_key`s.

    The cache is a folder for one tokenizer fingerprint (put it in the folder name) of Parquet
    parts keyed by each record's content. A data fix re-tokenises only the records it changed and
    writes them as a small new part, rather than rewriting every record's ids.
    """
    parts = sorted(cache_dir.glob("part-*.parquet"))
    cache = (
        pa.concat_tables([pq.read_table(p, schema=_CACHE_SCHEMA) for p in parts])
        if parts
        else _CACHE_SCHEMA.empty_table()
    )
    row_of = dict(zip(cache.column("key").to_pylist(), range(cache.num_rows), strict=True))
    missing = {k: r for k, r in zip(keys, records, strict=True) if k not in row_of}
    if missing:
        # Into Arrow one batch at a time: as Python lists, the ids took ~15 KB a record (1.4 GB more
        # peak memory at 100k records, benchmarks/scale.py); as Arrow they take ~2 KB.
        fresh_keys, fresh_records = list(missing), list(missing.values())
        new = pa.concat_tables(
            [_cache_table(fresh_keys[i : i + TOKENIZE_BATCH],
                          tokenize_records(tokenizer, fresh_records[i : i + TOKENIZE_BATCH]))
             for i in range(0, len(fresh_records), TOKENIZE_BATCH)]
        )  # fmt: skip
        row_of.update(zip(missing, range(cache.num_rows, cache.num_rows + new.num_rows), strict=True))
        cache = pa.concat_tables([cache, new])
        if len(parts) + 1 > COMPACT_AFTER:
            cache = cache.take(sorted(row_of.values()))  # one row per key
            row_of = dict(zip(cache.column("key").to_pylist(), range(cache.num_rows), strict=True))
            _write_part(cache_dir, cache)
            for part in parts:
                part.unlink()
        else:
            _write_part(cache_dir, new)
    return cache.take([row_of[k] for k in keys]).select(["input_ids", "labels"]), len(missing)


def _cache_table(keys: list[str], examples: list[dict]) -> pa.Table:
    columns = {
        "key": keys,
        "input_ids": [e["input_ids"] for e in examples],
        "labels": [e["labels"] for e in examples],
    }
    return pa.table(columns, schema=_CACHE_SCHEMA)


def _write_part(cache_dir: Path, part: pa.Table) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1("".join(sorted(part.column("key").to_pylist())).encode()).hexdigest()[:16]
    tmp = cache_dir / f".tmp-{name}-{os.getpid()}"  # two runs tokenising the same records at once
    pq.write_table(part, tmp)
    tmp.replace(cache_dir / f"part-{time.time_ns()}-{name}.parquet")  # sorted = written order
