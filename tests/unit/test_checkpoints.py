"""When a fine-tune may resume from its checkpoints, and what it says when it may not."""

from stages.checkpoints import plan_resume

KEY = {"data_version": "d1", "initial_model": "base-1", "config": "c1", "code_version": "finetune-2/abc"}


def make_checkpoints(root, *steps):
    for step in steps:
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")


def test_the_same_key_resumes_from_the_last_complete_checkpoint_and_ignores_a_half_written_one(tmp_path):
    root = tmp_path / "checkpoints"
    assert plan_resume(root, KEY, "run-a").checkpoint is None  # nothing yet: step 0, folder claimed
    make_checkpoints(root, 3, 6)
    (root / ".staging" / "checkpoint-9").mkdir(parents=True)  # killed mid-save
    plan = plan_resume(root, KEY, "run-b")
    assert (plan.checkpoint, plan.step, plan.previous_run_id) == (root / "checkpoint-6", 6, "run-a")
    assert plan.reason.startswith("resuming from step 6")
    assert not (root / ".staging").exists()


def test_a_changed_key_starts_at_step_0_says_what_changed_and_drops_the_old_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    plan_resume(root, KEY, "run-a")
    make_checkpoints(root, 3)
    plan = plan_resume(root, {**KEY, "data_version": "d2"}, "run-b")
    assert plan.checkpoint is None and plan.step == 0
    assert plan.reason == "not resuming checkpoint-3: data_version d1 -> d2 changed; starting at step 0"
    assert not (root / "checkpoint-3").exists()
    # Checkpoints found without any key (not written by us) are never loaded either.
    (root / "resume_key.json").unlink()
    make_checkpoints(root, 5)
    assert plan_resume(root, KEY, "run-c").checkpoint is None
