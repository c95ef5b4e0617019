"""training.max_minutes: training sized by the pace it measures, the learning rate decayed by the end."""

import time

import torch
from transformers import TrainerControl, TrainerState, TrainingArguments, get_cosine_schedule_with_warmup

from stages.train import TimeBudget, budgeted_end, cosine_with_warmup


def _step(budget: TimeBudget, step: int, args: TrainingArguments | None = None) -> TrainerControl:
    control = TrainerControl()
    budget.on_step_end(args, TrainerState(global_step=step, max_steps=40), control)
    return control


def test_the_end_is_the_last_step_the_time_left_holds():
    # 10 steps done in 100 s of a 300 s budget at 10 s a step: 20 more fit.
    assert budgeted_end(done=10, elapsed_s=100, budget_s=300, pace_s=10, end=40) == 30
    assert budgeted_end(done=10, elapsed_s=100, budget_s=300, pace_s=10, end=25) == 25  # never later
    assert budgeted_end(done=10, elapsed_s=100, budget_s=1000, pace_s=10, end=40) == 40  # never past max
    assert budgeted_end(done=10, elapsed_s=320, budget_s=300, pace_s=10, end=40) == 10  # over: stop now


def test_a_slow_pace_ends_the_schedule_early_and_training_stops_there_with_an_evaluation(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=20, use_cpu=True)
    lines: list[str] = []
    budget = TimeBudget(minutes=1.0, max_steps=40, log=lines.append)  # 60 s
    budget.on_train_begin(args, TrainerState(), TrainerControl())
    budget.start -= 5.0  # the first step took 5 s (warm-up: not counted as the pace)
    assert not _step(budget, 1, args).should_training_stop and budget.end == 40
    budget.start -= 4.0  # then 2 s a step, but PACE_STEPS steps are measured before any plan
    budget.first = (1, budget.first[1] - 4.0)
    assert not _step(budget, 3, args).should_training_stop and budget.end == 40 and lines == []
    budget.start -= 6.0
    budget.first = (1, budget.first[1] - 6.0)
    control = _step(budget, 6, args)  # 15 s used, 45 s left at 2 s a step: 22 more steps
    assert budget.end == 28 and not control.should_training_stop
    assert lines == ["time budget: training ends at step 28 of 40 (15 s of 60 s used at step 6)"]
    stop = _step(budget, 28, args)
    assert stop.should_training_stop and stop.should_evaluate and budget.stopped_at == 28


def test_training_stops_at_the_first_step_past_the_budget_and_says_where():
    budget = TimeBudget(minutes=0.5 / 60, max_steps=40, log=lambda _: None)  # half a second
    budget.on_train_begin(None, TrainerState(), TrainerControl())
    assert not _step(budget, 1).should_training_stop and budget.stopped_at is None
    time.sleep(0.6)
    assert _step(budget, 2).should_training_stop and budget.stopped_at == 2


def test_no_budget_never_stops():
    budget = TimeBudget(minutes=None, max_steps=40)
    budget.start -= 3600
    assert not _step(budget, 39).should_training_stop and budget.stopped_at is None and budget.end == 40


def test_the_schedule_is_hfs_cosine_and_reaches_zero_where_the_budget_ends():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=40)
    factors = []
    for _ in range(40):
        factors.append(hf.get_last_lr()[0])
        optimizer.step()
        hf.step()
    assert [round(cosine_with_warmup(s, 3, 40), 6) for s in range(40)] == [round(f, 6) for f in factors]
    assert cosine_with_warmup(28, 3, 28) == 0.0 and cosine_with_warmup(27, 3, 28) < 0.01
