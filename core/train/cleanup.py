"""Ray Train runs that free their placement group when Tune stops them, without Ray's dashboard.

When Tune stops a trial (ASHA, a time budget, an interrupt) inside `trainer.fit()`, the trial actor exits
and its Train controller dies with it (an actor dies with its owner). The workers' placement group does
not: it belongs to the job, which is still alive. Ray Train 2.60 frees it with a detached
`PlacementGroupCleaner` that polls the controller's liveness through the state API
(`ray.util.state.get_actor`), which is served by the dashboard; seagrid starts Ray without one, so the
check never succeeds, the group stays CREATED, the cleaner actor lives on, and the next trials' groups
stay PENDING (a 6-trial ASHA search on 2 CPUs hung). Here the cleaner asks the GCS directly
(`ray._private.state.actors`, the table `ray list actors` reads), which needs no dashboard.
"""

from __future__ import annotations

from typing import Any

from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller import placement_group_cleaner as _cleaner_module
from ray.train.v2._internal.execution.controller.placement_group_cleaner import PlacementGroupCleaner


def actor_alive_in_gcs(actor_id: str, timeout: float | None = None) -> bool:
    """Whether an actor is alive, from the GCS actor table (no dashboard needed)."""
    from ray._private import state

    info = state.actors(actor_id=actor_id)
    return bool(info) and info.get("State") != "DEAD"


class GcsPlacementGroupCleaner(PlacementGroupCleaner):
    """Ray's cleaner, with its liveness check answered by the GCS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # This actor's process hosts nothing else: its module-level check can be pointed at the GCS.
        _cleaner_module.is_actor_alive = actor_alive_in_gcs


class GcsPlacementGroupCleanerCallback(PlacementGroupCleanerCallback):
    """Launches `GcsPlacementGroupCleaner` instead of Ray's (the rest of the callback is Ray's)."""

    def after_controller_start(self, train_run_context: Any) -> None:
        original = _cleaner_module.PlacementGroupCleaner
        from ray.train.v2._internal.callbacks import placement_group_callback as module

        # Through the module's namespace: a checker reads `module.X = ...` as rebinding a class.
        vars(module)["PlacementGroupCleaner"] = GcsPlacementGroupCleaner
        try:
            super().after_controller_start(train_run_context)
        finally:
            vars(module)["PlacementGroupCleaner"] = original


def cleaning_torch_trainer() -> type:
    """A TorchTrainer class whose placement group is freed when its controller dies (a stopped Tune
    trial). Made on demand: the cleaner's actor imports this module and should not import torch."""
    # The Train v2 class, which `ray.train.torch.TorchTrainer` is (Ray's default) and whose callbacks this
    # replaces; named directly because ray.train.torch picks it at import time, out of a checker's sight.
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    class CleaningTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [
                GcsPlacementGroupCleanerCallback() if type(cb) is PlacementGroupCleanerCallback else cb
                for cb in callbacks
            ]

    return CleaningTorchTrainer


def leftover_train_resources() -> dict[str, list[str]]:
    """Placement groups made by actors that are dead (orphans) and live Train helper actors: what a
    stopped trial could leave behind. Empty lists when nothing leaked."""
    import ray
    from ray._private import state

    actors = state.actors()
    alive = {a: info for a, info in actors.items() if info.get("State") != "DEAD"}
    groups = ray.util.placement_group_table()
    live_groups = [pg for pg, info in groups.items() if info.get("state") != "REMOVED"]
    helpers = [
        f"{info['ActorClassName']}:{a}"
        for a, info in alive.items()
        if info["ActorClassName"] in ("TrainController", "RayTrainWorker", "PlacementGroupCleaner")
        or info["ActorClassName"].endswith("PlacementGroupCleaner")
    ]
    return {"placement_groups": live_groups, "actors": helpers}
