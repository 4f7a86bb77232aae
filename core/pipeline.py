"""A trial as a small graph of steps: labels (-> transfer) -> stage1 -> stage2, an eval after each stage."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from core.config import (
    METHODS_WITH_SEA,
    NOT_IDENTITY,
    DatasetConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    StageConfig,
    Strict,
    TrialConfig,
    WordsConfig,
)
from core.config.facts import ENCODER_FACTS
from core.stages import STAGES, StageName, enabled_stages
from core.steps import Step, StepResources

LABELS, TRANSFER = "labels", "labels-transfer"


class LabelsStepConfig(Strict):
    """What defines a label store: the labelling encoder, the word list, the dataset, top-n and sign."""

    encoder: str
    words: WordsConfig
    data: DatasetConfig
    top_n: int
    sign: str
    score_dtype: str = "float32"
    trial: TrialConfig = Field(json_schema_extra=NOT_IDENTITY)


class TransferStepConfig(Strict):
    """A label store moved onto another encoder's patch grid (REFERENCE.md 2.2)."""

    grid: tuple[int, int]
    top_n: int
    trial: TrialConfig = Field(json_schema_extra=NOT_IDENTITY)


class TrainStepConfig(Strict):
    """What defines a training stage's result (the stage before it and its labels are dependencies)."""

    stage: StageName
    model: ModelConfig
    method: MethodConfig | None
    data: DatasetConfig
    settings: StageConfig
    seed: int
    trial: TrialConfig = Field(json_schema_extra=NOT_IDENTITY)


class EvalStepConfig(Strict):
    """What defines an evaluation: its settings, whether it is the trial's last, the prompt template."""

    stage: StageName
    final: bool
    eval: EvalConfig
    template: str | None
    trial: TrialConfig = Field(json_schema_extra=NOT_IDENTITY)


@dataclass(frozen=True)
class TrialSteps:
    """A trial's steps: the label steps (SEA only), the training stages and their evaluations, by name."""

    labels: tuple[Step, ...]
    stages: dict[str, Step]
    evals: dict[str, Step]

    def all(self) -> list[Step]:
        """Every step in an order that puts dependencies first."""
        out = list(self.labels)
        for name, step in self.stages.items():
            out.append(step)
            if name in self.evals:
                out.append(self.evals[name])
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
    labels = Step(
        LABELS,
        LabelsStepConfig(
            encoder=label_encoder,
            words=sea.words,
            data=cfg.data.stage1,
            top_n=sea.top_n,
            sign=sea.sign,
            trial=cfg,
        ),
        resources=_one_worker(cfg),
    )
    grid = ENCODER_FACTS[cfg.model.encoder][1]
    if grid == ENCODER_FACTS[label_encoder][1]:
        return (labels,)
    transfer = Step(
        TRANSFER, TransferStepConfig(grid=grid, top_n=sea.top_n, trial=cfg), (labels,), _one_worker(cfg)
    )
    return labels, transfer


def trial_steps(cfg: TrialConfig) -> TrialSteps:
    """The pure description of a trial's work; steps that trials share hash alike and run once."""
    labels = label_steps(cfg)
    stages: dict[str, Step] = {}
    evals: dict[str, Step] = {}
    kinds = enabled_stages(cfg)
    previous: Step | None = None
    for kind in kinds:
        deps: tuple[Step, ...] = ()
        if previous is not None:
            deps += (previous,)
        if kind.sea_applies and labels:
            deps += (labels[-1],)
        applies = (kind.sea_applies and cfg.method.name in METHODS_WITH_SEA) or kind.basic_applies(cfg.method)
        config = TrainStepConfig(
            stage=kind.name,
            model=cfg.model,
            method=cfg.method if applies and cfg.method.name != "llava" else None,
            data=kind.dataset(cfg),
            settings=kind.settings(cfg),
            seed=cfg.seed,
            trial=cfg,
        )
        resources = StepResources(
            cpus=cfg.resources.cpus_per_worker,
            gpus=cfg.resources.gpus_per_worker,
            workers=cfg.resources.num_workers,
        )
        step = Step(kind.name, config, deps, resources)
        stages[kind.name] = step
        if cfg.eval.enabled:
            ev = EvalStepConfig(
                stage=kind.name,
                final=kind is kinds[-1],
                eval=cfg.eval,
                template=cfg.stage2.template,
                trial=cfg,
            )
            evals[kind.name] = Step(f"eval-{kind.name}", ev, (step,), _one_worker(cfg))
        previous = step
    return TrialSteps(labels, stages, evals)


def stage_dirs(steps: TrialSteps, root, upto: str) -> dict[str, str]:
    """{stage name: its step directory} of the stages up to and including `upto`."""
    out: dict[str, str] = {}
    for name, step in steps.stages.items():
        out[name] = str(step.path(root))
        if name == upto:
            break
    return out


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
    "stage_dirs",
    "trial_steps",
]
