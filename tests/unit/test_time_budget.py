"""training.max_minutes: the Trainer stops after the first step that ends past the budget."""

import time

from transformers import TrainerControl, TrainerState

from stages.train import TimeBudget


def _step(budget: TimeBudget, step: int) -> TrainerControl:
    control = TrainerControl()
    budget.on_step_end(None, TrainerState(global_step=step, max_steps=40), control)
    return control


def test_training_stops_at_the_first_step_past_the_budget_and_says_where():
    budget = TimeBudget(minutes=0.5 / 60)  # half a second
    budget.on_train_begin(None, TrainerState(), TrainerControl())
    assert not _step(budget, 1).should_training_stop and budget.stopped_at is None
    time.sleep(0.6)
    assert _step(budget, 2).should_training_stop and budget.stopped_at == 2


def test_no_budget_never_stops():
    budget = TimeBudget(minutes=None)
    budget.start -= 3600
    assert not _step(budget, 39).should_training_stop and budget.stopped_at is None
