"""Steps: pure descriptions named by the hash of what defines them, materialised once under one protocol."""

from core.steps.context import StepContext, TrialRuntime
from core.steps.lease import Lease
from core.steps.materialize import STEP_FILE, Materialized, materialize
from core.steps.status import StepStatus, is_success, read_failure, step_status
from core.steps.step import Step, StepFn, StepRecord, StepResources, upstream, walk

__all__ = [
    "STEP_FILE",
    "Lease",
    "Materialized",
    "Step",
    "StepContext",
    "StepFn",
    "StepRecord",
    "StepResources",
    "StepStatus",
    "TrialRuntime",
    "is_success",
    "materialize",
    "read_failure",
    "step_status",
    "upstream",
    "walk",
]
