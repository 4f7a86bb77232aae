"""Before Tune waits: can the Ray cluster ever hold each trial's workers (GPUs and CPUs, per node)?"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.config import TrialConfig
from grid.spec import SpecError

# Resource names Ray uses for a node's totals and a worker's bundle.
CPU, GPU = "CPU", "GPU"


class ClusterTooSmallError(SpecError):
    """No node set of the cluster can ever hold a trial's workers, and no autoscaler adds nodes."""


@dataclass(frozen=True)
class Need:
    """What a trial asks of the cluster: `workers` bundles of `cpus` + `gpus`; on one node when `one_node`."""

    workers: int
    cpus: float
    gpus: float
    one_node: bool = False

    def text(self) -> str:
        where = " on one node" if self.one_node else ""
        return f"{self.workers} worker(s) x ({self.gpus:g} GPU, {self.cpus:g} CPU){where}"


def trial_need(cfg: TrialConfig) -> Need:
    """The workers of a trial's stages (grid/trial.py's ScalingConfig: PACK, which may spread over nodes);
    its label and evaluation tasks take one worker's resources, so they fit wherever one worker does."""
    r = cfg.resources
    return Need(workers=r.num_workers, cpus=r.cpus_per_worker, gpus=r.gpus_per_worker)


def fits(need: Need, nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether the bundles can be placed on the nodes' total resources (first fit, largest nodes first:
    exact for identical bundles, which a trial's workers are)."""
    free = sorted(
        ([float(n.get(GPU, 0.0)), float(n.get(CPU, 0.0))] for n in nodes), key=lambda r: (-r[0], -r[1])
    )
    if need.one_node:
        return any(need.workers * need.gpus <= g and need.workers * need.cpus <= c for g, c in free)
    left = need.workers
    for node in free:
        while left and node[0] >= need.gpus and node[1] >= need.cpus:
            node[0] -= need.gpus
            node[1] -= need.cpus
            left -= 1
    return left == 0


def describe(nodes: Sequence[Mapping[str, float]]) -> str:
    """'2 node(s): 8 CPU + 0 GPU, 4 CPU + 2 GPU'."""
    parts = [f"{float(n.get(CPU, 0)):g} CPU + {float(n.get(GPU, 0)):g} GPU" for n in nodes]
    return f"{len(nodes)} node(s): {', '.join(parts) or 'none'}"


def cluster_findings(
    trials: Mapping[str, TrialConfig], nodes: Sequence[Mapping[str, float]], *, autoscaler: bool
) -> list[str]:
    """One sentence per trial the cluster can never place (with an autoscaler: that the grid waits)."""
    out = []
    for tid, cfg in trials.items():
        need = trial_need(cfg)
        if fits(need, nodes):
            continue
        if autoscaler:
            out.append(
                f"trial {tid} needs {need.text()} and the cluster now has {describe(nodes)}; the grid waits for "
                "the autoscaler to add nodes"
            )
        else:
            out.append(
                f"trial {tid} needs {need.text()} but the cluster has {describe(nodes)} and no autoscaler; "
                "lower resources.num_workers / gpus_per_worker / cpus_per_worker or add nodes"
            )
    return out


def live_nodes() -> list[dict[str, float]]:
    """Total CPU and GPU of each alive node of the connected Ray cluster."""
    import ray

    return [
        {CPU: n["Resources"].get(CPU, 0.0), GPU: n["Resources"].get(GPU, 0.0)}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def autoscaler_configured() -> bool:
    """Whether an autoscaler publishes its node types to this cluster (what `ray up` clusters and KubeRay
    with autoscaling do): then nodes can still come."""
    from ray._private import state

    try:
        return state.state.get_cluster_config() is not None
    except Exception:  # noqa: BLE001 -- an older GCS without the key: treat as fixed-size
        return False


def check_cluster(trials: Mapping[str, TrialConfig], say: object = print) -> None:
    """The call site before Tune starts: refuse (exit 2) when a trial can never be placed on a fixed-size
    cluster; with an autoscaler, say that the grid waits for nodes. Needs a connected Ray session."""
    autoscaler = autoscaler_configured()
    findings = cluster_findings(trials, live_nodes(), autoscaler=autoscaler)
    if findings and not autoscaler:
        raise ClusterTooSmallError("\n".join(findings))
    for line in findings:
        say(line)  # type: ignore[operator]
