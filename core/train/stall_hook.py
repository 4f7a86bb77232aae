"""A test-only hook: a stage's reports stall once (SEAGRID_TEST_STALL), to exercise grid/watchdog.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV = "SEAGRID_TEST_STALL"  # "<marker file>:<step>:<seconds>": after that step's report, sleep once


def stall_callbacks() -> list[Any]:
    """A Ray Train callback on the controller that holds the reports of the step named in $SEAGRID_TEST_STALL
    back for its seconds, once (the marker file records it), as a driver that stopped receiving them."""
    spec = os.environ.get(ENV)
    if not spec:
        return []
    marker, step, seconds = spec.rsplit(":", 2)
    from ray.train import UserCallback

    class StallOnce(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            import time

            reported = (metrics[0].get("seagrid") or {}).get("step")
            if reported == int(step) and not Path(marker).exists():
                Path(marker).write_text("stalled")
                time.sleep(float(seconds))

    return [StallOnce()]
