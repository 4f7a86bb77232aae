"""A silent driver recovered: when no running trial has reported for a while, the Tune run is ended (and
resumed by grid/run.py in a fresh Ray session, from the checkpoints)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper


class Watchdog(Callback, Stopper):
    """Tune's callback (what each trial last did) and stopper (ends the whole run once every running
    trial has been silent for `minutes`). Tune asks `stop_all` at every step of its loop, also when no
    result arrives, which is the case it watches for: a Ray session that stopped delivering actor state."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.fired = False
        self.silent_s = 0.0
        self.results = 0  # results heard in this run (a restart that hears none made no progress)
        self._running: set[str] = set()
        self._last = time.monotonic()

    def _heard(self) -> None:
        self._last = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running.add(trial.trial_id)
        self._heard()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.results += 1
        self._heard()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running.discard(trial.trial_id)
        self._heard()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running.discard(trial.trial_id)
        self._heard()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # a single trial is never stopped here

    def stop_all(self) -> bool:
        if self.minutes is None or not self._running or self.fired:
            return self.fired
        self.silent_s = time.monotonic() - self._last
        self.fired = self.silent_s >= 60 * self.minutes
        return self.fired

    def message(self) -> str:
        return (
            f"no running trial has reported for {self.silent_s / 60:.1f} min (output.watchdog_minutes "
            f"{self.minutes:g}): ending this Tune run and resuming it in a fresh Ray session from the "
            "checkpoints"
        )
