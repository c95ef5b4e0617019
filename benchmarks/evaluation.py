"""The demo's evaluation: `generate` and full logits (before) vs tunegraph's scoring (after), one run.

    python benchmarks/evaluation.py [--home DIR] [--json]

Needs a state folder where the demo ran (`make demo`; default $TUNEGRAPH_HOME or ./data): its
held-out examples, few-shot demonstrations, base model and fine-tuned model, with the demo's
evaluation settings. Each of today's three prompting baselines (the zero_shot, system_prompt and
few_shot variants of `prompts:`) and the fine-tuned model is scored on the same examples twice,
in one process:
  before  perplexity with logits at every position; greedy answers from `model.generate` on
          length-sorted batches, which keep every row until the batch's last one stops
  after   stages.evaluation.score: logits only at scored positions, and rows that leave the batch
          at their EOS (stages/generation.py; since then their slots also go to waiting prompts)
A retrain scores only the new model's partitions: the base model's prompt partitions stay synced
in Dagster, so `rerun_s` is the fine-tuned model's `after` time twice (candidate and champion, the
champion scored when it is not the candidate). Reported per variant: seconds before and after, whether every answer is the same, and
the perplexity before and after (equal up to float rounding).
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import dagster as dg  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.before import fixed_batches  # noqa: E402
from pipelines.cli import configure_environment  # noqa: E402
from resources.outputs import output_folder  # noqa: E402
from resources.settings import DEFAULT_CONFIG, TunegraphSettings  # noqa: E402
from stages.chat import IGNORE_INDEX  # noqa: E402
from stages.evaluation import eval_items, left_padded, score, scored_batch  # noqa: E402
from stages.inference import inference_placement, load_saved  # noqa: E402
from stages.prompts import conversations, example_pool  # noqa: E402
from stages.serving import decode_answer, decoding_config  # noqa: E402
from stages.tables import read_rows  # noqa: E402


@torch.no_grad()
def before_score(
    model: Any, tokenizer: Any, items: list, batch_size: int, max_new: int, penalty: float
) -> dict:
    """The evaluation as it was: full logits for perplexity, `model.generate` for the answers."""
    p_ids = tokenizer([i.nll_prompt for i in items], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([i.nll_target + tokenizer.eos_token for i in items], add_special_tokens=False)[
        "input_ids"
    ]
    seqs = [p + r for p, r in zip(p_ids, r_ids, strict=True)]
    total, count = 0.0, 0
    for batch in fixed_batches([len(s) for s in seqs], batch_size, 8192):
        ids, labels, mask = scored_batch(tokenizer.pad_token_id, p_ids, r_ids, batch)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        labels = labels.to(model.device)
        total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))  # fmt: skip
        count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    g_ids = tokenizer([i.gen_prompt for i in items], add_special_tokens=False)["input_ids"]
    texts: list[str] = [""] * len(items)
    for batch in fixed_batches([len(p) + max_new for p in g_ids], batch_size, 8192):
        ids, mask = (t.to(model.device) for t in left_padded(tokenizer.pad_token_id, g_ids, batch))
        width = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=mask,
                             generation_config=decoding_config(tokenizer, max_new, penalty))[:, width:]  # fmt: skip
        for row, i in enumerate(batch):
            texts[i] = decode_answer(tokenizer, out[row].tolist())[0]
    return {"perplexity": float(torch.exp(torch.tensor(total / count))), "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=os.environ.get("TUNEGRAPH_HOME", "data"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = TunegraphSettings(home=str(Path(args.home).resolve()), config_path=str(DEFAULT_CONFIG))
    paths, cfg = settings.paths(), settings.config()
    ev = cfg.evaluation
    configure_environment(paths.home, DEFAULT_CONFIG)
    with dg.DagsterInstance.get() as instance:  # the outputs Dagster recorded as current
        current = {a: output_folder(instance, a) for a in ("deduplicated_corpus", "augmented_corpus",
                                                           "base_model", "fine_tuned_model")}  # fmt: skip
    try:
        missing = [a for a, folder in current.items() if folder is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} not materialised")
        records = read_rows(current["deduplicated_corpus"] / "eval" / "held_out.parquet")[: ev.max_examples]
        pool = example_pool(read_rows(current["augmented_corpus"] / "train.parquet"))
        models = {
            "base": current["base_model"] / "model",
            "fine_tuned": current["fine_tuned_model"] / "model",
        }
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(
            f"{err}: run `make demo` first, or pass --home with a state folder where it ran"
        ) from err

    torch.manual_seed(0)
    placement = inference_placement(cfg)  # where the evaluation runs: the training device and precision
    rows: dict[str, dict[str, Any]] = {}
    baselines = {f"base_{v}": v for v in ("zero_shot", "system_prompt", "few_shot")}
    for source, variants in (("base", baselines), ("fine_tuned", {"fine_tuned": "zero_shot"})):
        model, tokenizer = load_saved(models[source], placement)
        for variant, name in variants.items():
            asked = conversations(cfg.variant(name), records, pool, cfg.data.seed)
            items = eval_items(asked, records, tokenizer, ev.max_new_tokens)
            start = time.perf_counter()
            old = before_score(
                model, tokenizer, items, ev.batch_size, ev.max_new_tokens, ev.repetition_penalty
            )
            before_s = time.perf_counter() - start
            start = time.perf_counter()
            new, texts = score(model, tokenizer, items, ev.batch_size, ev.max_new_tokens, ev.repetition_penalty,
                               variant)  # fmt: skip
            after_s = time.perf_counter() - start
            rows[variant] = {
                "before_s": round(before_s, 1),
                "after_s": round(after_s, 1),
                "same_answers": sum(a == b for a, b in zip(old["texts"], texts, strict=True)),
                "examples": len(items),
                "perplexity_before": round(old["perplexity"], 4),
                "perplexity_after": round(new["perplexity"], 4),
            }
        del model

    out = {
        "examples": len(records),
        "variants": rows,
        "before_s": round(sum(r["before_s"] for r in rows.values()), 1),
        "after_s": round(sum(r["after_s"] for r in rows.values()), 1),
        "rerun_s": round(2 * rows["fine_tuned"]["after_s"], 1),
    }
    out["speedup"] = round(out["before_s"] / out["after_s"], 2)
    out["rerun_speedup"] = round(out["before_s"] / out["rerun_s"], 2)
    if args.json:
        print(json.dumps(out))
        return
    print(f"the demo's evaluation on {len(records)} held-out examples ({settings.home})")
    print(
        f"{'variant':<20}{'before s':>10}{'after s':>10}{'same answers':>14}{'ppl before':>12}{'ppl after':>12}"
    )
    for variant, r in rows.items():
        print(f"{variant:<20}{r['before_s']:>10}{r['after_s']:>10}{r['same_answers']:>9}/{r['examples']:<4}"
              f"{r['perplexity_before']:>12}{r['perplexity_after']:>12}")  # fmt: skip
    print(f"total {out['before_s']} s -> {out['after_s']} s ({out['speedup']}x); a retrain with the baselines' "
          f"partitions synced {out['rerun_s']} s ({out['rerun_speedup']}x)")  # fmt: skip


if __name__ == "__main__":
    main()
