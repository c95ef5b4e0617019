"""training.max_minutes: training sized by the pace it measures, the learning rate decayed by the end."""

import time

import pytest
import torch
from datasets import Dataset
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    get_cosine_schedule_with_warmup,
)

from stages import train as train_module
from stages.train import CheckpointedTrainer, TimeBudget, budgeted_end, cosine_with_warmup


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


class _Clock(TrainerCallback):
    """The training process's clock, 2 s a step (listed before the budget, so it ticks first); it
    records the learning rate of each step and can stop training after a step, as a kill would."""

    def __init__(self, now: float, stop_after: int | None = None):
        self.now, self.stop_after, self.lr = now, stop_after, {}

    def perf_counter(self) -> float:
        return self.now

    def on_step_end(self, args, state, control, lr_scheduler=None, **kw):
        self.now += 2.0
        self.lr[state.global_step] = lr_scheduler.get_last_lr()[0]
        if state.global_step == self.stop_after:
            control.should_training_stop = True


def _budgeted_trainer(tmp_path, clock: _Clock, lines: list[str]) -> tuple[CheckpointedTrainer, TimeBudget]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    rows = Dataset.from_dict(
        {"input_ids": [[i % 32] * 8 for i in range(16)], "labels": [[i % 32] * 8 for i in range(16)]}
    )
    args = TrainingArguments(output_dir=str(tmp_path / "checkpoints"), max_steps=40, save_steps=6, warmup_steps=2,
                             per_device_train_batch_size=2, learning_rate=1e-3, lr_scheduler_type="cosine",
                             use_cpu=True, report_to="none", disable_tqdm=True, logging_steps=100)  # fmt: skip
    budget = TimeBudget(minutes=1.0, max_steps=40, log=lines.append)  # 60 s at 2 s a step
    trainer = CheckpointedTrainer(
        model=model, args=args, train_dataset=rows, callbacks=[clock, budget], budget=budget
    )
    return trainer, budget


def test_a_resumed_budgeted_run_keeps_its_planned_last_step_and_the_time_already_used(tmp_path, monkeypatch):
    # First process: the pace (2 s a step) plans the end at step 30 of 40; killed after the checkpoint at step 6.
    first_clock = _Clock(now=100.0, stop_after=6)
    monkeypatch.setattr(train_module, "time", first_clock)
    first, budget = _budgeted_trainer(tmp_path, first_clock, [])
    first.train()
    assert budget.end == 30 and (tmp_path / "checkpoints" / "checkpoint-6").is_dir()

    # Second process, its own clock: the 12 s already used and the planned end come with the checkpoint.
    clock, lines = _Clock(now=5000.0), []
    monkeypatch.setattr(train_module, "time", clock)
    resumed, budget = _budgeted_trainer(tmp_path, clock, lines)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-6"))
    # The budget ran out where the first process planned: 12 s + 24 steps at 2 s = 60 s, step 30.
    assert budget.stopped_at == 30 and resumed.state.global_step == 30
    assert lines[0] == "time budget: resumed at step 6 with 12 s of 60 s used, training ends at step 30 of 40"
    # The learning rate continued the schedule that ends at step 30 (not a new one ending at 40).
    assert clock.lr[7] == pytest.approx(1e-3 * cosine_with_warmup(7, 2, 30))
    assert clock.lr[30] == 0.0
