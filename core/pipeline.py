"""A trial as a small graph of steps: labels (-> transfer) -> stage1 -> stage2, an eval and an export after
each stage.

Each step carries the function that builds it (its kind's module: core/labels/step.py,
core/train/launch.py, core/evaluation/step.py, core/export/step.py); `core.steps.runner` runs any graph. A new kind of step
is a config and a function in a module of its own, and a line here that adds it to the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from core.config import METHODS_WITH_SEA, TrialConfig
from core.config.facts import ENCODER_FACTS
from core.evaluation.job import EvalStepConfig
from core.evaluation.step import build_eval, eval_in_task, eval_summary
from core.export.config import export_config
from core.export.step import export_step, export_summary
from core.export.support import refusal
from core.labels.step import (
    LABELS,
    TRANSFER,
    LabelsStepConfig,
    TransferStepConfig,
    always_in_task,
    build_labels,
    build_transfer,
    labels_in_task,
)
from core.stages import STAGES, StageKind, enabled_stages
from core.steps import Step, StepResources, TrialRuntime
from core.steps.runner import run_steps
from core.train.launch import InWorkerEval, TrainStepConfig, build_stage, stage_summary


@dataclass(frozen=True)
class TrialSteps:
    """A trial's steps: the label steps (SEA only), the training stages, their evaluations and their
    transformers exports (only for a model that has a LLaVA form: `core.export.support.refusal`), by name."""

    labels: tuple[Step, ...]
    stages: dict[str, Step]
    evals: dict[str, Step]
    exports: dict[str, Step] = field(default_factory=dict)

    def all(self) -> list[Step]:
        """Every step in an order that puts dependencies first."""
        out = list(self.labels)
        for name, step in self.stages.items():
            out.append(step)
            out += [s[name] for s in (self.evals, self.exports) if name in s]
        return out


def _one_worker(cfg: TrialConfig) -> StepResources:
    r = cfg.resources
    return StepResources(cpus=r.cpus_per_worker, gpus=r.gpus_per_worker, workers=1)


def label_steps(cfg: TrialConfig) -> tuple[Step, ...]:
    """SEA's label store and, when the trial's encoder has another patch grid, its transfer."""
    sea = cfg.method.sea
    if cfg.method.name not in METHODS_WITH_SEA or not cfg.stage1.enabled:
        return ()
    label_encoder = sea.labels_from or cfg.model.encoder
    config = LabelsStepConfig(
        encoder=label_encoder,
        words=sea.words,
        data=cfg.data.stage1,
        top_n=sea.top_n,
        sign=sea.sign,
        encoder_path=cfg.model.encoder_path if label_encoder == cfg.model.encoder else None,
        batch_size=sea.label_batch_size,
        chunk_words=sea.label_chunk_words,
        parallel=sea.label_parallel,
    )
    labels = Step(LABELS, config, (), _one_worker(cfg), build_labels, labels_in_task)
    grid = ENCODER_FACTS[cfg.model.encoder][1]
    if grid == ENCODER_FACTS[label_encoder][1]:
        return (labels,)
    transfer = TransferStepConfig(grid=grid, top_n=sea.top_n)
    return labels, Step(TRANSFER, transfer, (labels,), _one_worker(cfg), build_transfer, always_in_task)


def _train_step(cfg: TrialConfig, kind: StageKind, deps: tuple[Step, ...]) -> Step:
    applies = (kind.sea_applies and cfg.method.name in METHODS_WITH_SEA) or kind.basic_applies(cfg.method)
    config = TrainStepConfig(
        stage=kind.name,
        model=cfg.model,
        method=cfg.method if applies and cfg.method.name != "llava" else None,
        data=kind.dataset(cfg),
        settings=kind.settings(cfg),
        seed=cfg.seed,
    )
    r = cfg.resources
    resources = StepResources(cpus=r.cpus_per_worker, gpus=r.gpus_per_worker, workers=r.num_workers)
    return Step(kind.name, config, deps, resources, build_stage, summary=stage_summary)


def _eval_step(cfg: TrialConfig, kind: StageKind, final: bool, stage: Step) -> Step:
    config = EvalStepConfig(
        stage=kind.name, final=final, eval=cfg.eval, template=cfg.stage2.template, model=cfg.model
    )
    return Step(
        f"eval-{kind.name}", config, (stage,), _one_worker(cfg), build_eval, eval_in_task, eval_summary
    )


def _export_step(cfg: TrialConfig, kind: StageKind, stage: Step, ev: Step | None) -> Step:
    """The stage's export; after its evaluation too, so the model card carries the final metrics. Nothing
    depends on it: adding it renames no other step."""
    deps = (stage,) if ev is None else (stage, ev)
    config = export_config(cfg, kind.name)
    return Step(
        f"export-{kind.name}", config, deps, _one_worker(cfg), export_step, always_in_task, export_summary
    )


def trial_steps(cfg: TrialConfig) -> TrialSteps:
    """The pure description of a trial's work; steps that trials share hash alike and run once."""
    labels = label_steps(cfg)
    stages: dict[str, Step] = {}
    evals: dict[str, Step] = {}
    exports: dict[str, Step] = {}
    exportable = refusal(cfg.model.encoder, cfg.model.adapter) is None
    kinds = enabled_stages(cfg)
    previous: Step | None = None
    for kind in kinds:
        deps: tuple[Step, ...] = ()
        if previous is not None:
            deps += (previous,)
        if kind.sea_applies and labels:
            deps += (labels[-1],)
        step = _train_step(cfg, kind, deps)
        if cfg.eval.enabled:
            ev = _eval_step(cfg, kind, kind is kinds[-1], step)
            if cfg.resources.num_workers == 1:
                # One worker evaluates right after training, model in memory; not identity: same hash.
                in_worker = InWorkerEval(step=ev.record(), config=ev.config)
                step = replace(step, config=step.config.model_copy(update={"evaluate": in_worker}))
                ev = replace(ev, deps=(step,))
            evals[kind.name] = ev
        stages[kind.name] = step
        if exportable and cfg.export.exports(kind.name, kind is kinds[-1]):
            exports[kind.name] = _export_step(cfg, kind, step, evals.get(kind.name))
        previous = step
    return TrialSteps(labels, stages, evals, exports)


def prepare_labels(
    cfg: TrialConfig,
    root: Path | None = None,
    *,
    progress: bool = False,
    parallel: int | str | None = None,
) -> Path:
    """Materialise a SEA trial's label steps here (in this process) under `root` (default: the cache's
    `steps/`); the directory of the store stage 1 reads. `parallel` is `extract_store`'s: None extracts
    in this process, K in K Ray tasks, "auto" by cluster and dataset size."""
    from core.paths import cache_dir

    root = Path(root) if root is not None else cache_dir() / "steps"
    steps = label_steps(cfg)
    if not steps:
        raise ValueError(f"method '{cfg.method.name}' has no SEA labels (or stage 1 is off)")
    last = steps[-1]
    first = steps[0].config
    assert isinstance(first, LabelsStepConfig)  # label_steps puts the store's step first
    if parallel != first.parallel:  # not identity: the graph's hashes stay
        labels = replace(steps[0], config=steps[0].config.model_copy(update={"parallel": parallel}))
        last = labels if len(steps) == 1 else replace(steps[-1], deps=(labels,))
    runtime = TrialRuntime(trial=cfg, cache_dir=str(cache_dir()), progress=progress)
    for _ in run_steps([last], root, runtime, local=True):
        pass
    return last.path(root)


__all__ = [
    "LABELS",
    "STAGES",
    "TRANSFER",
    "EvalStepConfig",
    "LabelsStepConfig",
    "TrainStepConfig",
    "TransferStepConfig",
    "TrialSteps",
    "label_steps",
    "prepare_labels",
    "trial_steps",
]
