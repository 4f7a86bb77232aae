"""Cluster-scale scheduling benchmark: 1,000 mixed trials as GPU gangs on a simulated 256-GPU Ray cluster.

Not a test. Each trial reserves its gang of fake GPUs (a local session started with num_gpus=256) as a
placement group, one bundle per 8-GPU node as a Train run's workers would take them, and holds it for its
modelled duration: the plan's GPU-hour estimate (grid/estimate.py) over its GPUs, scaled so the ideal
makespan is --makespan seconds. The default runner requests the gangs from the driver exactly as Tune's
resource manager does (up to 200 outstanding, in trial order) but holds them with a timer instead of a
sleeping trial actor: a Tune trial is a process, and hundreds of them do not fit a small machine
(--runner tune does that on a large one). Reported per trial order (FIFO = grid order; LPT = longest
first): makespan and GPU busy fraction against the lower bound max(total GPU-seconds / GPUs, longest
trial), for Ray and for a list-scheduling model of the same order with 0, 0.5 and 1 s between a gang's
release and the next placement (Ray's re-placement latency, measured at 0.5-1 s here).

    uv run python bench/cluster_sim.py                  # both orders, ~5 min (--makespan 100)
    uv run python bench/cluster_sim.py --runner tune    # a Tune trial actor per cell (a process each)
    uv run python bench/cluster_sim.py --model-only     # the scheduling model alone, instant
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Before ray is imported: workers share this venv (no `uv run` per worker).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.models.llm import get_llm_spec  # noqa: E402
from core.models.vision import get_encoder_spec  # noqa: E402
from grid.estimate import estimate_stage  # noqa: E402

# LLaVA-1.5's data: 558K captions (stage 1), 665K instructions (stage 2).
STAGE_SAMPLES = {"stage1": 558_128, "stage2": 665_298}
# Step-time factor of each method over LLaVA (the bench goals: SEA <= 3 %, BASIC <= 10 %).
METHOD_COST = {"llava": 1.0, "sea": 1.03, "basic": 1.10, "sea+basic": 1.13}
# GPUs per trial by LLM, stage 1 only / both stages (larger models and stage 2 get larger gangs).
GANG = {
    "gemma-2b": (1, 2),
    "phi3-mini": (2, 4),
    "vicuna-7b": (4, 8),
    "mistral-7b": (4, 8),
    "llama3-8b": (8, 8),
    "vicuna-13b": (8, 16),
}
ENCODERS = ("clip-l-336", "clip-l-224", "siglip-so400m-384", "dinov2-l-224")
FRACTIONS = (0.25, 0.5, 1.0)  # share of the data a trial trains on (data-scaling axis)
SEEDS = (0, 1)


@dataclass(frozen=True)
class SimTrial:
    """One grid cell: what it trains, its gang of GPUs and its estimated GPU-hours."""

    id: str
    gpus: int
    gpu_hours: float


def make_grid(n: int, seed: int) -> list[SimTrial]:
    """``n`` cells of the product llm x encoder x method x fraction x stage-2 x seed, in a shuffled grid order."""
    cells = list(itertools.product(GANG, ENCODERS, METHOD_COST, FRACTIONS, (False, True), SEEDS))
    random.Random(seed).shuffle(cells)
    if n > len(cells):
        raise ValueError(f"--trials {n}: the grid has only {len(cells)} cells")
    out = []
    for llm, enc, method, fraction, stage2, s in cells[:n]:
        params, tokens = get_llm_spec(llm).params_b * 1e9, get_encoder_spec(enc).num_patches
        hours = sum(
            estimate_stage(stage, params, int(STAGE_SAMPLES[stage] * fraction), tokens, 1.0).gpu_hours
            for stage in ("stage1", "stage2")[: 1 + stage2]
        )
        tid = f"{llm}-{enc}-{method}-f{fraction}-{'s12' if stage2 else 's1'}-seed{s}"
        out.append(SimTrial(tid, GANG[llm][stage2], hours * METHOD_COST[method]))
    return out


def durations(trials: list[SimTrial], capacity: int, target_s: float) -> list[float]:
    """Wall seconds per trial (GPU-hours / GPUs, perfect scaling), scaled so total GPU-s / capacity = target."""
    wall_h = [t.gpu_hours / t.gpus for t in trials]
    scale = target_s * capacity / sum(t.gpu_hours for t in trials)
    return [h * scale for h in wall_h]


def lower_bound(gpus: list[int], durs: list[float], capacity: int) -> float:
    return max(sum(g * d for g, d in zip(gpus, durs, strict=True)) / capacity, max(durs))


def list_schedule(
    gpus: list[int], durs: list[float], capacity: int, order: list[int], release_delay: float = 0.0
) -> float:
    """Makespan of greedy list scheduling with backfill: whenever GPUs free up, start every queued trial
    that fits, scanning the queue in ``order`` (what Tune's pending placement groups amount to).

    ``release_delay``: seconds between a trial's end and its GPUs going to the next gang (Ray's
    re-placement latency); the makespan still ends with the last trial.
    """
    queue, running, free, now, last_end = list(order), [], capacity, 0.0, 0.0
    while queue or running:
        started = set()
        for i in queue:
            if gpus[i] <= free:
                free -= gpus[i]
                last_end = max(last_end, now + durs[i])
                heapq.heappush(running, (now + durs[i] + release_delay, gpus[i]))
                started.add(i)
        queue = [i for i in queue if i not in started]
        now, g = heapq.heappop(running)
        free += g
        while running and running[0][0] == now:
            free += heapq.heappop(running)[1]
    return last_end


def orders(trials: list[SimTrial], durs: list[float]) -> dict[str, list[int]]:
    fifo = list(range(len(trials)))
    lpt = sorted(fifo, key=lambda i: (-durs[i], -trials[i].gpus))
    return {"fifo": fifo, "lpt": lpt}


def _bundles(gpus: int, per_node: int) -> list[dict[str, float]]:
    # The trial's own actor (a sliver of CPU), then one bundle per node its Train workers would fill.
    nodes = [{"GPU": float(per_node)}] * (gpus // per_node) if gpus >= per_node else [{"GPU": float(gpus)}]
    return [{"CPU": 0.01}, *nodes]


def _measure(trials: list[SimTrial], spans: dict[int, tuple[float, float]], durs: list[float], capacity: int):
    first, last = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
    work = sum(trials[i].gpus * durs[i] for i in spans)
    return {"makespan": last - first, "busy": work / (capacity * (last - first))}


def run_placement_groups(
    trials: list[SimTrial],
    durs: list[float],
    order: list[int],
    capacity: int,
    per_node: int,
    window: int,
    reuse: bool = True,
) -> dict[str, float]:
    """Ray's gang scheduler, driven as Tune drives it, without a process per trial.

    Up to ``window`` placement-group requests are outstanding at once, issued in ``order`` (Tune's
    pending-trial window, 200 by default); a trial starts when Ray has placed its gang and holds it for
    its duration (a timer on the driver instead of a sleeping trial actor). Then, with ``reuse`` (Tune's
    ``reuse_actors``, on by default for function trainables), the next trial in order with the same gang
    takes it over at once, cancelling its own request; otherwise the gang is removed.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    queue, staged, running = list(reversed(order)), {}, []
    spans: dict[int, tuple[float, float]] = {}

    def start(i: int, pg, now: float) -> None:
        heapq.heappush(running, (now + durs[i], i, pg))
        spans[i] = (now, now + durs[i])

    def successor(gpus: int) -> int | None:
        for ref, (j, pg) in staged.items():  # requested in trial order
            if trials[j].gpus == gpus:
                del staged[ref]
                ray.cancel(ref)
                remove_placement_group(pg)
                return j
        for k in range(len(queue) - 1, -1, -1):  # the queue's next trial is at its end
            if trials[queue[k]].gpus == gpus:
                return queue.pop(k)
        return None

    began = time.time()
    while queue or staged or running:
        while queue and len(staged) < window:
            i = queue.pop()
            pg = placement_group(_bundles(trials[i].gpus, per_node), strategy="PACK")
            staged[pg.ready()] = (i, pg)
        now = time.time()
        timeout = max(0.0, running[0][0] - now) if running else None
        ready, _ = ray.wait(list(staged), num_returns=1, timeout=timeout) if staged else ([], [])
        if ready:
            ready, _ = ray.wait(list(staged), num_returns=len(staged), timeout=0)
        now = time.time()
        for ref in ready:
            start(*staged.pop(ref), now)
        if not staged and running and not ready:
            time.sleep(max(0.0, running[0][0] - time.time()))
        while running and running[0][0] <= time.time():
            _, i, pg = heapq.heappop(running)
            nxt = successor(trials[i].gpus) if reuse else None
            if nxt is None:
                remove_placement_group(pg)
            else:
                start(nxt, pg, time.time())
    out = _measure(trials, spans, durs, capacity)
    out["fit"] = time.time() - began
    return out


def run_tune(
    trials: list[SimTrial],
    durs: list[float],
    order: list[int],
    capacity: int,
    per_node: int,
    window: int,
    reuse: bool = True,
) -> dict[str, float]:
    """The same through Ray Tune: one trial actor per grid cell, sleeping its duration (needs many cores)."""
    from ray import tune

    spans: dict[int, tuple[float, float]] = {}

    class Spans(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
            spans[trial.config["cell"]] = (result["start"], result["end"])

    def sim_trial(config: dict) -> None:
        start = time.time()
        time.sleep(config["duration"])
        tune.report({"start": start, "end": time.time()})

    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(window)
    storage = tempfile.mkdtemp(prefix="cluster-sim-")
    try:
        tuner = tune.Tuner(
            tune.with_resources(
                sim_trial, lambda cfg: tune.PlacementGroupFactory(_bundles(cfg["gpus"], per_node))
            ),
            param_space={
                "cell": tune.grid_search(list(order)),
                "gpus": tune.sample_from(lambda spec: trials[spec.config.cell].gpus),
                "duration": tune.sample_from(lambda spec: durs[spec.config.cell]),
            },
            tune_config=tune.TuneConfig(reuse_actors=reuse),
            run_config=tune.RunConfig(storage_path=storage, name="sim", verbose=0, callbacks=[Spans()]),
        )
        began = time.time()
        results = tuner.fit()
        fit_s = time.time() - began
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if results.errors or len(spans) != len(order):
        raise RuntimeError(f"{len(results.errors)} trial(s) failed, {len(spans)}/{len(order)} reported")
    out = _measure(trials, spans, durs, capacity)
    out["fit"] = fit_s
    return out


RUNNERS = {"pg": run_placement_groups, "tune": run_tune}


def _with_ray(runner, capacity: int, *args):
    """``runner(*args)`` in a fresh local session holding ``capacity`` fake GPUs."""
    import ray

    for attempt in range(3):  # a loaded machine sometimes misses the node's startup deadline
        try:
            ray.init(
                address="local", num_cpus=4, num_gpus=capacity, include_dashboard=False, log_to_driver=False
            )
            break
        except Exception as err:  # Ray raises a bare Exception for a node startup timeout
            if attempt == 2 or "timed out during startup" not in str(err):
                raise
            ray.shutdown()
    try:
        return runner(*args)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=256, help="simulated cluster GPUs")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--makespan", type=float, default=100.0, help="target ideal makespan, seconds")
    parser.add_argument("--orders", default="fifo,lpt", help="comma-separated: fifo, lpt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runner",
        choices=sorted(RUNNERS),
        default="pg",
        help="pg: placement groups from the "
        "driver (default); tune: a Tune trial actor per cell (a process each: needs many cores)",
    )
    parser.add_argument("--window", type=int, default=200, help="outstanding gang requests (Tune's default)")
    parser.add_argument(
        "--release-delays",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[0.5, 1.0],
        help="also model these re-placement latencies (s); Ray measured ~0.5-1 s here",
    )
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="remove every gang at its trial's end (Tune reuse_actors=False)",
    )
    parser.add_argument("--model-only", action="store_true", help="skip Ray; the scheduling model only")
    args = parser.parse_args(argv)

    trials = make_grid(args.trials, args.seed)
    gpus = [t.gpus for t in trials]
    durs = durations(trials, args.gpus, args.makespan)
    ideal = lower_bound(gpus, durs, args.gpus)
    work = sum(g * d for g, d in zip(gpus, durs, strict=True))
    print(
        f"{len(trials)} trials, {sum(t.gpu_hours for t in trials):,.0f} estimated GPU-hours, gangs "
        f"{sorted(set(gpus))} GPUs, on {args.gpus} GPUs ({args.gpus_per_node}/node); scaled durations "
        f"{min(durs):.2f}-{max(durs):.2f} s (median {sorted(durs)[len(durs) // 2]:.2f} s); ideal makespan "
        f"{ideal:.1f} s"
    )
    print(f"{'order':6} {'runner':6} {'makespan s':>10} {'vs ideal':>9} {'GPU busy':>9} {'fit() s':>8}")
    for name in args.orders.split(","):
        order = orders(trials, durs)[name]
        for delay in (0.0, *args.release_delays):
            model = list_schedule(gpus, durs, args.gpus, order, delay)
            label = "model" if not delay else f"m+{delay:g}s"
            print(
                f"{name:6} {label:6} {model:10.1f} {model / ideal - 1:+9.1%} {work / (args.gpus * model):9.1%}"
            )
        if not args.model_only:
            got = _with_ray(
                RUNNERS[args.runner],
                args.gpus,
                trials,
                durs,
                order,
                args.gpus,
                args.gpus_per_node,
                args.window,
                not args.no_reuse,
            )
            runner = args.runner + ("" if args.no_reuse else "+r")
            print(
                f"{name:6} {runner:6} {got['makespan']:10.1f} {got['makespan'] / ideal - 1:+9.1%} "
                f"{got['busy']:9.1%} {got['fit']:8.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
