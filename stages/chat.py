"""Chat-template rendering and response-only tokenisation.

Every example is rendered with the base model's chat template; the prompt (everything up to and
including the assistant header) is masked out of the labels, and the response ends with the EOS
token the model stops on at generation time. A tokenizer without a template gets ChatML, which is
saved with the model so evaluation and serving render exactly what training saw.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips

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
    """Records -> [{input_ids, labels}] with labels only on the response and its EOS.

    Same ids as rendering each prompt and tokenising prompt and response separately (the
    reference path, `_tokenize_rendered`), but faster: the template is rendered once per role
    sequence with placeholder contents, its constant pieces are tokenised once, every message's
    content in one batched call, and the ids are spliced. A sample is checked against the
    reference path; records whose contents could merge with a neighbouring piece (leading or
    trailing whitespace) take the reference path.
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


def _tokenize_rendered(tokenizer: Any, records: list[dict[str, Any]]) -> list[dict]:
    """The reference path: render each prompt, tokenise prompts and responses in batches.

    The prompt ends with the assistant header, so the boundary tokenises as at generation time.
    """
    prompts = render_prompts(tokenizer, [prompt_messages(r) for r in records])
    responses = [response_text(r) + tokenizer.eos_token for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [
        {"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r}
        for p, r in zip(prompt_ids, response_ids, strict=True)
    ]


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
        pieces = skeletons[tuple(m["role"] for m in prompt_messages(r))]
        prompt: list[int] = list(pieces[0])
        for piece in pieces[1:]:
            prompt += next(content_ids) + piece
        response = next(content_ids)
        out.append({"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response})
    sample = records[:_SAMPLE]
    if out[: len(sample)] != _tokenize_rendered(tokenizer, sample):
        return None  # this template does not splice cleanly; the caller takes the reference path
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Changes whenever tokenisation could: vocabulary/merges, chat template, EOS."""
    backend = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else json.dumps(tokenizer.get_vocab())
    payload = "\x00".join(
        [type(tokenizer).__name__, backend, tokenizer.chat_template or "", tokenizer.eos_token]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def record_key(record: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(record["messages"], sort_keys=True).encode()).hexdigest()


COMPACT_AFTER = 16  # cache parts; past this, one compacted part replaces them
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
        new = _cache_table(list(missing), tokenize_records(tokenizer, list(missing.values())))
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
    tmp = cache_dir / f".tmp-{name}"
    pq.write_table(part, tmp)
    tmp.replace(cache_dir / f"part-{time.time_ns()}-{name}.parquet")  # sorted = written order
