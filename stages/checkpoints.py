"""Training checkpoints: written atomically, and resumed only by the run they belong to.

A checkpoint folder holds the resume key of the run that wrote it: the data version, the
config and the code version. The next materialisation resumes (optimizer, scheduler, RNG and
data position, through the HF Trainer) only when its own key is identical; otherwise it starts
at step 0 and says which part changed. Continuing from an earlier model on new data is not a
resume: that is `training.warm_start_from`, an explicit choice made elsewhere.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_FILE = "resume_key.json"
STAGING = ".staging"  # a checkpoint is written here, then renamed into place
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: Path | None  # the folder to resume from; None: start at step 0
    step: int
    reason: str  # one line for the logs: why it resumes, or why it does not
    previous_run_id: str | None  # the MLflow run that wrote the checkpoint


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first (a staging folder is never complete)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def plan_resume(root: Path, key: dict[str, str], run_id: str) -> ResumePlan:
    """Decide whether the run with this key resumes; claim the folder for run_id either way.

    Checkpoints of any other key are deleted: they can never be resumed, and loading only
    what this process wrote (under a matching key) is what keeps resuming safe.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / STAGING, ignore_errors=True)  # half-written by a process that died mid-save
    saved: dict[str, Any] = json.loads((root / KEY_FILE).read_text()) if (root / KEY_FILE).is_file() else {}
    found = checkpoints(root)
    previous_run = saved.get("mlflow_run_id")
    if found and saved.get("key") == key:
        last = found[-1]
        step = int(CHECKPOINT.match(last.name).group(1))
        plan = ResumePlan(last, step, f"resuming from step {step} ({last})", previous_run)
    else:
        if not found:
            reason = "no checkpoint to resume: starting at step 0"
        else:
            old = saved.get("key") or {}
            changed = [f"{k} {old.get(k)} -> {v}" for k, v in key.items() if old.get(k) != v]
            reason = f"not resuming {found[-1].name}: {'; '.join(changed) or 'no resume key'} changed; starting at step 0"
        for path in found:
            shutil.rmtree(path)
        plan = ResumePlan(None, 0, reason, None)
    (root / KEY_FILE).write_text(json.dumps({"key": key, "mlflow_run_id": run_id}, indent=2))
    return plan


def clear(root: Path) -> None:
    """Drop the checkpoints of a finished run: its model is published, nothing is left to resume."""
    shutil.rmtree(root, ignore_errors=True)


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is saved into a staging folder, then renamed into place.

    A process killed mid-save leaves only the staging folder, which `plan_resume` deletes, so a
    `checkpoint-N` folder is always complete. Mix in before the Trainer class:
    `class MyTrainer(AtomicCheckpoints, Trainer)`.
    """

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        root = Path(self.args.output_dir)
        staging = root / STAGING
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = str(root)
        self.accelerator.wait_for_everyone()  # every rank has written its own RNG state
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            shutil.rmtree(root / name, ignore_errors=True)
            os.rename(staging / name, root / name)  # atomic within one filesystem
            keep = self.args.save_total_limit
            for old in checkpoints(root)[:-keep] if keep else []:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
