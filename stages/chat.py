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
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.columns import record_keys
from stages.content import KeyRows, key_bytes
from stages.workers import LOCAL, Engine, map_chunks

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


COMPACT_AFTER = 16  # cache parts; past this, one compacted part replaces them
TOKENIZE_BATCH = 4096  # records tokenised, then held as Python lists, at a time (per worker)
TOKENIZE_PENDING = 32768  # new records handed to the workers at a time
# Token ids as int32 and which tokens are learnt as one bool each: 5 bytes a token, where int64
# ids and labels took 16 (at 1M records, ~150M tokens: 0.75 GB instead of 2.4 GB, held twice).
_PART_ARRAYS = ("keys", "ids", "learnt", "lengths")


@dataclass
class Tokens:
    """Tokenised examples as flat arrays: example i is `ids[starts[i]:starts[i] + lengths[i]]`.

    Its labels are its ids where `learnt`, IGNORE_INDEX elsewhere (what `tokenize_records` gives).
    Slicing shares the arrays; `table()` builds the (input_ids, labels) rows the files hold.
    """

    ids: np.ndarray  # int32, every stored example end to end
    learnt: np.ndarray  # bool, one per token
    starts: np.ndarray  # int64, one per example
    lengths: np.ndarray  # int64, one per example

    def __len__(self) -> int:
        return len(self.starts)

    def slice(self, start: int, stop: int | None = None) -> "Tokens":
        return Tokens(self.ids, self.learnt, self.starts[start:stop], self.lengths[start:stop])

    def take(self, rows: np.ndarray | list[int]) -> "Tokens":
        return Tokens(self.ids, self.learnt, self.starts[rows], self.lengths[rows])

    def gather(self) -> np.ndarray:
        """Positions in `ids` of every token of every example, in example order."""
        return ranges(self.starts, self.lengths)

    def table(self) -> pa.Table:
        """The examples as rows of input_ids and labels (int64 lists, as tokenize_records gives)."""
        at = self.gather()
        ids = self.ids[at].astype(np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(self.lengths)]), pa.int32())
        return pa.table(
            {
                "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                "labels": pa.ListArray.from_arrays(
                    offsets, pa.array(np.where(self.learnt[at], ids, IGNORE_INDEX))
                ),
            }
        )

    @classmethod
    def from_examples(cls, examples: list[dict]) -> "Tokens":
        """From tokenize_records' rows; a label that is neither its id nor IGNORE_INDEX is refused."""
        lengths = np.array([len(e["input_ids"]) for e in examples], dtype=np.int64)
        ids = np.fromiter((t for e in examples for t in e["input_ids"]), np.int64, int(lengths.sum()))
        labels = np.fromiter((t for e in examples for t in e["labels"]), np.int64, len(ids))
        return cls._checked(ids, labels, lengths)

    @classmethod
    def from_table(cls, examples: pa.Table) -> "Tokens":
        """From a table of input_ids and labels lists (any offsets, slices included)."""
        ids_col = examples.column("input_ids").combine_chunks()
        labels_col = examples.column("labels").combine_chunks()
        lengths = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = pc.list_flatten(ids_col).to_numpy(zero_copy_only=False).astype(np.int64)
        labels = pc.list_flatten(labels_col).to_numpy(zero_copy_only=False).astype(np.int64)
        return cls._checked(ids, labels, lengths)

    @classmethod
    def _checked(cls, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> "Tokens":
        learnt = labels != IGNORE_INDEX
        if len(labels) != len(ids) or not np.array_equal(labels[learnt], ids[learnt]):
            raise ValueError("every label must be its token's id or IGNORE_INDEX (-100): the examples are not "
                             "tokenize_records' output")  # fmt: skip
        if len(ids) and (ids.min() < 0 or ids.max() >= 2**31):
            raise ValueError("token ids must fit in int32")
        starts = (np.cumsum(lengths) - lengths).astype(np.int64)
        return cls(ids.astype(np.int32), learnt, starts, lengths)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[0]..starts[0]+lengths[0]-1, starts[1].., end to end (int64), without a Python loop."""
    total = int(lengths.sum())
    begin = np.cumsum(lengths) - lengths  # where each range starts in the output
    return np.repeat(starts - begin, lengths) + np.arange(total, dtype=np.int64)


def tokenize_cached(
    tokenizer: Any, batches: Iterable[pa.RecordBatch | pa.Table], cache_dir: Path, engine: Engine = LOCAL
) -> tuple[Tokens, int]:
    """`tokenize_records` over record batches, in order, reusing the tokens of records seen before;
    returns (tokens, newly tokenised records).

    The cache is a folder for one tokenizer fingerprint (put it in the folder name) of parts keyed
    by each record's `record_key`. A data fix re-tokenises only the records it changed and writes
    them as a small new part, rather than rewriting every record's ids. Records are looked up by
    their `record_key` column where they have one (computed from the record where not), and only
    the ones the cache lacks become Python dicts: at 100k records, turning every record into a dict
    and hashing its messages was 2.7 s of a one-record fix's 11.6 s here. A part is a folder of .npy
    files (keys as raw 20 bytes, ids, learnt flags, lengths), memory-mapped: as Parquet list
    columns, the 1M-record part took 2.7-3.9 s to decode on every run.
    """
    parts = sorted(p for p in cache_dir.glob("part-*") if p.is_dir())
    loaded = [{name: np.load(part / f"{name}.npy", mmap_mode="r") for name in _PART_ARRAYS} for part in parts]
    stored_keys = np.concatenate([np.zeros(0, "S20"), *(part["keys"] for part in loaded)])
    ids, learnt, lengths = ([part[name] for part in loaded] for name in ("ids", "learnt", "lengths"))
    stored = len(stored_keys)
    rows_of = KeyRows(stored_keys)  # record key -> example number (the first, if two parts hold it)
    fresh: dict[bytes, int] = {}  # keys tokenised now -> example number, in order
    examples: list[np.ndarray] = []  # example number of each record, a batch at a time
    pending: list[dict[str, Any]] = []  # new records not tokenised yet

    def tokenize_pending() -> None:
        if not pending:
            return
        for new in map_chunks(partial(_tokenize_chunk, tokenizer), pending, engine=engine):  # on every core
            ids.append(new.ids)
            learnt.append(new.learnt)
            lengths.append(new.lengths)
        pending.clear()

    for batch in batches:
        keys = key_bytes(record_keys(batch))
        numbers = rows_of(keys)
        unseen = []
        for i in np.flatnonzero(numbers < 0).tolist():
            key = keys[i : i + 1].tobytes()  # all 20 bytes (an element alone drops trailing zeros)
            if key not in fresh:
                fresh[key] = stored + len(fresh)
                unseen.append(i)
            numbers[i] = fresh[key]
        if unseen:
            pending += batch.take(pa.array(unseen, pa.int64())).to_pylist()
        examples.append(numbers)
        if len(pending) >= TOKENIZE_PENDING:
            tokenize_pending()
    tokenize_pending()
    all_lengths = _joined(lengths, np.int64)
    store = Tokens(
        _joined(ids, np.int32), _joined(learnt, np.bool_), np.cumsum(all_lengths) - all_lengths, all_lengths
    )
    for arrays in (ids, learnt, lengths):  # the store holds them now
        arrays.clear()
    if fresh:
        fresh_keys = np.frombuffer(b"".join(fresh), dtype="S20")
        if len(parts) + 1 > COMPACT_AFTER:  # one row per key: the first stored ones, then the new
            kept = np.concatenate([rows_of.first, np.arange(stored, stored + len(fresh))])
            _write_part(cache_dir, np.concatenate([stored_keys[rows_of.first], fresh_keys]), store.take(kept))
            for part in parts:
                shutil.rmtree(part)
        else:
            _write_part(cache_dir, fresh_keys, store.slice(stored))
    return store.take(np.concatenate([np.zeros(0, np.int64), *examples])), len(fresh)


def _joined(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    """The arrays end to end; one alone is used as it is (a memory-mapped part is not copied)."""
    if len(arrays) == 1:
        return arrays[0]
    # copy=False: the concatenation is already a fresh array, and at 1M records each extra 600 MB
    # copy cost seconds of first-touch page faults on this VM (a one-record fix's profile).
    return np.concatenate([np.zeros(0, dtype), *arrays]).astype(dtype, copy=False)


def _tokenize_chunk(tokenizer: Any, records: list[dict[str, Any]]) -> Tokens:
    return Tokens.from_examples(tokenize_records(tokenizer, records))


def _write_part(cache_dir: Path, keys: np.ndarray, tokens: Tokens) -> None:
    at = tokens.gather()
    arrays = {"keys": keys, "ids": tokens.ids[at], "learnt": tokens.learnt[at], "lengths": tokens.lengths}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{os.getpid()}-{time.time_ns()}"  # two runs tokenising at once
    tmp.mkdir()
    for name in _PART_ARRAYS:
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(arrays[name]))
    tmp.rename(cache_dir / f"part-{time.time_ns()}")  # sorted = written order
