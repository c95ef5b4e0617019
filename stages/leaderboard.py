"""One leaderboard: every (prompt variant, model) pair and every trained model, the same metrics.

A row is a way to get answers: the base model asked with a prompt variant (`base_few_shot`, kind
`prompt`), or a trained model (`fine_tuned`, `preference`, `champion`, and a trained model asked
with a variant, `fine_tuned_retrieved_context`, kind `model`). Its cost is in two columns: tokens
of prompt per request (what a prompt pays on every call) and training minutes (what a model paid
once). Rows are ranked by the primary metric on the held-out split.
"""

from typing import Any

# The reward model's judgement (stages/reward_judge.py) where one is trained: mean reward of the answers,
# win rate against the base model's plain answers, and a policy's own pair accuracy by log-probabilities.
JUDGED = ("reward", "win_rate", "pair_accuracy")
METRICS = ("loss", "perplexity", "rouge_l", "exact_match", "stop_rate", "prompt_tokens", *JUDGED)
COLUMNS = ("rank", "row", "kind", "model", "prompt", *METRICS, "train_minutes")
LOWER_IS_BETTER = {"loss", "perplexity", "prompt_tokens"}  # the judged columns: higher is better


def rows(
    scored: dict[str, dict[str, Any]],
    held_out: dict[str, dict[str, Any] | None],
    metric: str,
    train_minutes: dict[str, float],
) -> list[dict[str, Any]]:
    """The leaderboard on held-out scores, best first by `metric` (rows it does not apply to last).

    `scored`: row -> {model_kind, variant}; `held_out`: row -> scores (the champion's row may be
    a candidate's scores, under the name champion); `train_minutes`: model kind -> minutes."""
    board = []
    for row, scores in held_out.items():
        if scores is None:
            continue
        entry = scored.get(row, {"model_kind": row, "variant": "zero_shot"})
        kind = entry["model_kind"]
        board.append({
            "row": row, "kind": "prompt" if kind == "base" else "model", "model": kind,
            "prompt": entry["variant"], **{m: scores.get(m) for m in METRICS},
            "train_minutes": train_minutes.get(kind, 0.0 if kind == "base" else None),
        })  # fmt: skip
    board.sort(key=lambda r: _key(r.get(metric), metric))
    for rank, row in enumerate(board, 1):
        row["rank"] = rank
    return board


def best_prompts(board: list[dict[str, Any]], metric: str) -> dict[str, str]:
    """The best row per model kind with prompt variants of its own (base, fine_tuned): what gets the
    alias best-base / best-fine-tuned. The board is ranked, so the first row of a kind wins."""
    best: dict[str, str] = {}
    for row in board:
        if row["model"] in ("base", "fine_tuned") and row.get(metric) is not None:
            best.setdefault(row["model"], row["row"])
    return best


def winner_by_metric(board: list[dict[str, Any]]) -> dict[str, str]:
    """For each metric, the row that wins it: does the best prompt or the fine-tuned model win?"""
    out = {}
    for m in METRICS:
        if m == "prompt_tokens":
            continue
        ranked = sorted((r for r in board if r.get(m) is not None), key=lambda r: _key(r[m], m))
        if ranked:
            out[m] = ranked[0]["row"]
    return out


def format_table(board: list[dict[str, Any]]) -> str:
    """The leaderboard as aligned text (`tunegraph leaderboard`, `tunegraph report`)."""
    judged = any(r.get(m) is not None for r in board for m in JUDGED)
    head = (f"  {'#':>2} {'row':<34} {'kind':<6} {'loss':>7} {'ppl':>8} {'rouge_l':>8} {'exact':>6} "
            f"{'stop':>5} {'prompt tok':>10} {'train min':>9}")  # fmt: skip
    if judged:
        head += f" {'reward':>7} {'win':>5} {'pairs':>5}"
    lines = [head]
    for r in board:
        line = (
            f"  {r['rank']:>2} {r['row']:<34} {r['kind']:<6} {_f(r['loss'], 4):>7} {_f(r['perplexity'], 2):>8} "
            f"{_f(r['rouge_l'], 4):>8} {_f(r['exact_match'], 2):>6} {_f(r['stop_rate'], 2):>5} "
            f"{_f(r['prompt_tokens'], 0):>10} {_f(r['train_minutes'], 1):>9}"
        )
        if judged:
            line += f" {_f(r.get('reward'), 3):>7} {_f(r.get('win_rate'), 2):>5} {_f(r.get('pair_accuracy'), 2):>5}"
        lines.append(line)
    return "\n".join(lines)


def _key(value: float | None, metric: str) -> tuple[int, float]:
    if value is None:
        return (1, 0.0)
    return (0, value if metric in LOWER_IS_BETTER else -value)


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_leaderboard(evaluation: dict[str, Any]) -> str:
    """model_evaluation's leaderboard with who wins each metric and the prompt search's dev vs held-out."""
    board = evaluation["leaderboard"]
    lines = [f"leaderboard (held-out, ranked by {evaluation['primary_metric']}):", format_table(board)]
    wins = winner_by_metric(board)
    lines.append("wins: " + ", ".join(f"{m} {row}" for m, row in wins.items()))
    best = evaluation.get("best_prompts") or {}
    if best:
        lines.append(
            "best prompts (aliases best-base, best-fine-tuned): "
            + ", ".join(f"{k} {v}" for k, v in best.items())
        )
    search = evaluation.get("prompt_search")
    if search:
        dev, held = search["dev"], search["held_out"]
        lines.append(
            f"prompt search ({len(search['tried'])} candidates on the dev split, by {search['metric']}): "
            f"dev rouge_l {_f(dev.get('rouge_l'), 4)} / held-out {_f(held.get('rouge_l'), 4)}, "
            f"dev perplexity {_f(dev.get('perplexity'), 2)} / held-out {_f(held.get('perplexity'), 2)}"
        )
    return "\n".join(lines)
