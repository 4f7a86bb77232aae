"""Each planned trial's steps and where they stand: done, reused, running, failed, shared or new."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.pipeline import trial_steps
from core.steps import StepStatus, step_status


def steps_of_trials(
    trials: list[Any], root: Path, trial_status: dict[str, str]
) -> dict[str, list[dict[str, str]]]:
    """{trial id: [{step, dir, status}]} in dependency order. A finished step reads `done` for a trial that
    is done and `reused` for one still to run (another trial or grid made it); a new step that an earlier
    trial of this plan also needs reads `shared` (it will be made once)."""
    first_user: dict[str, str] = {}
    out: dict[str, list[dict[str, str]]] = {}
    for trial in trials:
        rows = []
        for step in trial_steps(trial.config).all():
            status = step_status(root, step.dirname)
            text = status.value
            if status is StepStatus.SUCCESS:
                text = "done" if trial_status.get(trial.id) == "done" else "reused"
            elif status is StepStatus.NEW and step.dirname in first_user:
                text = f"shared ({first_user[step.dirname]})"
            first_user.setdefault(step.dirname, trial.id)
            rows.append({"step": step.name, "dir": step.dirname, "status": text})
        out[trial.id] = rows
    return out


def steps_text(rows: list[dict[str, str]]) -> str:
    """One line per trial for the plan table: `labels:reused stage1:new eval-stage1:new`."""
    return " ".join(f"{r['step']}:{r['status'].split(' ')[0]}" for r in rows)
