"""The config of one trial: model, method, data, stages, evaluation, seed and resources (pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config.base import IDENTITY_IF_SET, NOT_IDENTITY, Strict, check_registry
from core.config.evaluation import EvalConfig
from core.config.facts import (
    ADAPTER_IDS,
    CHAT_TEMPLATES,
    ENCODER_FACTS,
    LLM_IDS,
    encoders_with_text_tower,
)
from core.config.heldout import HeldoutConfig
from core.config.methods import METHODS, METHODS_WITH_BASIC, METHODS_WITH_SEA  # noqa: F401  (re-exported)


class ModelConfig(Strict):
    """Which LLM, vision encoder and adapter a trial composes."""

    llm: str = "tiny-llama"
    encoder: str = "tiny-clip"
    adapter: str = "mlp2x_gelu"
    llm_path: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    encoder_path: str | None = Field(None, json_schema_extra=NOT_IDENTITY)

    @field_validator("llm")
    @classmethod
    def _known_llm(cls, v: str) -> str:
        return check_registry("LLM", v, LLM_IDS)

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        return check_registry("vision encoder", v, ENCODER_FACTS)

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, v: str) -> str:
        return check_registry("adapter", v, ADAPTER_IDS)


class WordsConfig(Strict):
    """SEA's word list (core/labels/words.py WORD_SOURCES): the frequent caption words (a regex, for tiny
    offline specs), a file (one word per line), the papers' 2of12 list (a file, default
    data/words/2of12.txt), noun phrases parsed from the captions, or both joined (SEA EMNLP)."""

    source: Literal["captions", "file", "2of12", "syntactic", "syntactic+2of12"] = "captions"
    path: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    min_count: int = Field(2, ge=1)
    max_words: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _file_needs_path(self) -> WordsConfig:
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs path (a text file with one word per line)")
        return self


class SeaConfig(Strict):
    """SEA settings (REFERENCE.md section 2); every one is a search axis."""

    align_weight: float = Field(1.0, ge=0, description="lambda of Eq. 13: L = L_g + lambda * L_a")
    top_n: int = Field(10, ge=1)
    window: int = Field(2, ge=1)
    sign: Literal["negated", "plain"] = "negated"
    tau_init: float = Field(1.0, gt=0, description="tau = exp(log_tau), log_tau starts at log(tau_init)")
    learn_tau: bool = True
    labels_from: str | None = None
    words: WordsConfig = Field(default_factory=WordsConfig)
    label_batch_size: int = Field(32, ge=1, json_schema_extra=NOT_IDENTITY)
    label_parallel: int | Literal["auto"] | None = Field(
        "auto",
        json_schema_extra=NOT_IDENTITY,
        description="Ray tasks for label extraction: a number, or auto (one per GPU for large datasets)",
    )
    label_chunk_words: int = Field(
        65536,
        ge=1,
        json_schema_extra=NOT_IDENTITY,
        description="words scored at once (exact scoring cuts it further to keep a batch's scores within 1 "
        "GiB)",
    )

    @field_validator("labels_from")
    @classmethod
    def _known_label_encoder(cls, v: str | None) -> str | None:
        if v is None:
            return v
        check_registry("vision encoder", v, ENCODER_FACTS)
        if not ENCODER_FACTS[v][0]:
            raise ValueError(
                f"'{v}' has no text tower, so it cannot label patches; use one of "
                f"{', '.join(encoders_with_text_tower())}"
            )
        return v


class BasicConfig(Strict):
    """BASIC settings (REFERENCE.md section 3): L = L_lm + das_weight * L_das + sds_weight * L_sds."""

    layers: int | None = Field(
        None, ge=1, description="k, the shallow layers 1..k that supervise; default half the LLM's layers"
    )
    weighting: Literal["inc", "const", "dec"] = "inc"
    degree: Literal["auto", "equal"] = "auto"
    das_weight: float = Field(1.0, ge=0, description="lambda1 (Eq. 8)")
    sds_weight: float = Field(0.01, ge=0, description="lambda2 (Eq. 8)")
    stage1: bool = Field(True, description="apply BASIC's losses in stage 1")
    stage2: bool = Field(True, description="apply BASIC's losses in stage 2")

    @model_validator(mode="after")
    def _something_to_do(self) -> BasicConfig:
        if self.das_weight == 0 and self.sds_weight == 0:
            raise ValueError(
                "das_weight and sds_weight are both 0: BASIC would add nothing; use method llava"
            )
        if not (self.stage1 or self.stage2):
            raise ValueError("stage1 and stage2 are both false: BASIC would add nothing; use method llava")
        return self


class MethodConfig(Strict):
    """The alignment method: `llava` the baseline (no extra losses), `sea` SEA's alignment loss, `basic`
    BASIC's self-distillation, `sea+basic` both."""

    name: Literal["llava", "sea", "basic", "sea+basic"] = "llava"
    sea: SeaConfig = Field(default_factory=SeaConfig)
    basic: BasicConfig = Field(default_factory=BasicConfig)

    def identity_exclude(self) -> set[str]:
        """Settings of methods not in use do not change what a trial computes."""
        out = set()
        if self.name not in METHODS_WITH_SEA:
            out.add("sea")
        if self.name not in METHODS_WITH_BASIC:
            out.add("basic")
        return out


class SyntheticDataConfig(Strict):
    """Parameters of the procedurally generated dataset (they define its content)."""

    num_samples: int = Field(256, ge=1)
    seed: int = 0
    image_size: int = Field(128, ge=16)
    max_objects: int = Field(3, ge=1, le=9)


class DatasetConfig(Strict):
    """A LLaVA-format dataset: generated on first use, or a local JSON + image root."""

    source: Literal["synthetic", "llava"] = "synthetic"
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    name: str | None = None
    json_path: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    image_root: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    on_missing_image: Literal["fail", "skip"] = "fail"
    expected_samples: int | None = Field(
        None, ge=1, json_schema_extra=NOT_IDENTITY, description="sample count for the plan's estimate"
    )
    max_unsupervised_fraction: float = Field(
        0.0, ge=0, le=1, description="share of samples with nothing supervised tolerated (dropped, counted)"
    )
    fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        json_schema_extra=IDENTITY_IF_SET,
        description="train on this seeded share of the samples (BASIC's ablations: 0.1 of the 665K mix); the "
        "same subset for every trial of the dataset",
    )
    fraction_seed: int = Field(0, json_schema_extra=IDENTITY_IF_SET, description="the seed of that subset")

    @model_validator(mode="after")
    def _llava_needs_paths(self) -> DatasetConfig:
        if self.source == "llava":
            missing = [k for k in ("name", "json_path", "image_root") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"source 'llava' needs {', '.join(missing)} (name identifies the dataset in trial ids; "
                    "json_path and image_root say where it is)"
                )
        return self


class DataConfig(Strict):
    """Datasets per training stage (synthetic: captions for stage 1, instruction conversations for stage 2)."""

    stage1: DatasetConfig = Field(default_factory=DatasetConfig)
    stage2: DatasetConfig = Field(default_factory=DatasetConfig)


class DeepSpeedSettings(Strict):
    """How a stage runs under DeepSpeed; none of this changes what it computes (so not part of trial ids)."""

    zero: Literal["auto", "off", 0, 1, 2, 3] = Field(
        "auto",
        description="ZeRO stage; auto: off without GPUs, else 2 for stage 1 and the LLM's registry stage "
        "for stage 2; off: plain PyTorch DDP",
    )
    offload: Literal["none", "optimizer", "optimizer+params"] = Field(
        "none", description="ZeRO-Offload of optimizer states (ZeRO >= 1) and parameters (ZeRO-3 only) to CPU"
    )

    @model_validator(mode="after")
    def _offload_fits_stage(self) -> DeepSpeedSettings:
        if self.offload == "optimizer+params" and self.zero not in (3, "auto"):
            raise ValueError(f"offload 'optimizer+params' needs zero 3 (got zero {self.zero!r})")
        if self.offload != "none" and self.zero in ("off", 0):
            raise ValueError(f"offload '{self.offload}' needs a ZeRO stage >= 1 (got zero {self.zero!r})")
        return self


class StageConfig(Strict):
    """Optimisation hyper-parameters of one training stage (LLaVA-1.5 stage-1 defaults)."""

    enabled: bool = True
    lr: float = Field(1e-3, gt=0)
    global_batch_size: int = Field(256, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    group_by_length: Literal["off", "modality", "length"] = Field(
        "off",
        description="batch order: off (random, DistributedSampler); modality: LLaVA's "
        "group_by_modality_length (LLaVA-1.5 uses it in stage 2, the default there); length: similar "
        "lengths share a micro-batch",
    )
    loader_workers: int | None = Field(
        None,
        ge=0,
        json_schema_extra=NOT_IDENTITY,
        description="DataLoader worker processes per rank (tokenise and decode images off the training "
        "process); null: min(4, cpus_per_worker - 1) on GPUs, 0 on CPU",
    )
    pin_memory: bool | None = Field(
        None, json_schema_extra=NOT_IDENTITY, description="pin batches for async copies; null: on GPUs only"
    )
    log_every: int = Field(1, ge=1, json_schema_extra=NOT_IDENTITY)
    checkpoint_every: int | None = Field(None, ge=1, json_schema_extra=NOT_IDENTITY)
    checkpoint_minutes: float | None = Field(
        60,
        gt=0,
        json_schema_extra=NOT_IDENTITY,
        description="also checkpoint once this many minutes have passed since the last checkpoint (long "
        "stages); null: by checkpoint_every only",
    )
    checkpoint_keep: int = Field(
        2, ge=1, json_schema_extra=NOT_IDENTITY, description="checkpoints kept; older ones are deleted"
    )
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings, json_schema_extra=NOT_IDENTITY)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        json_schema_extra=IDENTITY_IF_SET,
        description="auto: bf16 on GPUs (bf16 compute, fp32 master weights and optimizer states, frozen "
        "weights in bf16), fp32 on CPUs; an explicit value is part of the trial id, auto is not",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        json_schema_extra=NOT_IDENTITY,
        description="recompute the LLM's layer activations in backward; auto: on for LLMs of 1B parameters "
        "and more",
    )
    heldout: HeldoutConfig = Field(
        default_factory=HeldoutConfig,
        json_schema_extra=IDENTITY_IF_SET,
        description="a held-out split of this stage's data and its L_lm curve (search metrics)",
    )

    def identity_exclude(self) -> set[str]:
        """group_by_length was added after trials were run with random order: "off" stays out of the id
        (whatever the stage's default), every grouping is in it, so a stage that groups has its own id."""
        return {"group_by_length"} if self.group_by_length == "off" else set()


class Stage2Config(StageConfig):
    """Instruction tuning (LLaVA-1.5 stage 2): adapter + LLM train, optionally the vision tower."""

    enabled: bool = False
    lr: float = Field(2e-5, gt=0)
    global_batch_size: int = Field(128, ge=1)
    train_vision: bool = False
    vision_lr: float = Field(2e-6, gt=0)
    template: str | None = Field(None, description="chat template; default: the LLM's own")
    # LLaVA-1.5's finetune script passes --group_by_modality_length True.
    group_by_length: Literal["off", "modality", "length"] = Field(
        "modality",
        description="batch order (see stage1.group_by_length); default modality, as LLaVA-1.5's stage 2",
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str | None) -> str | None:
        return v if v is None else check_registry("chat template", v, CHAT_TEMPLATES)


class ResourcesConfig(Strict):
    """Ray Train workers of one trial and what each holds."""

    num_workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    gpu_memory_gb: float = Field(80, gt=0, description="memory of each GPU, for the plan's memory check")
    max_failures: int = Field(
        0,
        ge=-1,
        description="times a stage's worker group is restarted from its latest checkpoint after a worker "
        "fails (a killed process, a NCCL timeout; node preemptions are retried regardless); 0: never, -1: "
        "without limit. Ray retries every worker error, a NaN loss or an out-of-memory too, hence off by "
        "default",
    )
    nccl_timeout_minutes: float = Field(
        60,
        gt=0,
        description="how long a rank waits in a collective before the process group fails the stage; the "
        "default covers rank 0 writing a 13B model (52 GB in fp32) at 15 MB/s while the others wait",
    )


class ExportConfig(Strict):
    """Which stages the trial writes as transformers LLaVA checkpoints (core/export) as steps of its graph.

    An export is the whole model in bf16: about 14 GB at 7B, 26 GB at 13B, per stage. "final" (the model
    other tools load) is the default; `seagrid export --stage stage1` writes any other finished stage later.
    Not part of the trial's identity: what a trial trains does not depend on it."""

    stages: Literal["final", "all", "none"] = Field(
        "final", description="final: the last stage's model; all: after every stage; none: no export step"
    )

    def exports(self, stage: str, final: bool) -> bool:
        """Whether the stage that just finished (`final`: the trial's last) is exported."""
        return self.stages == "all" or (self.stages == "final" and final)


class TrialConfig(Strict):
    """Everything one trial needs; grid axes set values at dotted paths inside it."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stage1: StageConfig = Field(default_factory=StageConfig)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, json_schema_extra=NOT_IDENTITY)
    export: ExportConfig = Field(default_factory=ExportConfig, json_schema_extra=NOT_IDENTITY)

    @model_validator(mode="after")
    def _sea_needs_text_tower(self) -> TrialConfig:
        encoder = self.model.encoder
        if (
            self.method.name in METHODS_WITH_SEA
            and self.method.sea.labels_from is None
            and not ENCODER_FACTS[encoder][0]
        ):
            with_text = ", ".join(encoders_with_text_tower())
            raise ValueError(
                f"method.sea.labels_from: model.encoder '{encoder}' has no text tower to label its patches; "
                f"set method.sea.labels_from to an encoder with one ({with_text}) to transfer its labels"
            )
        return self

    @model_validator(mode="after")
    def _sea_window_fits_grid(self) -> TrialConfig:
        # SEA samples one patch per k x k window of the trial encoder's grid (labels are viewed on it);
        # a window larger than the grid would leave a single window, i.e. one patch per image.
        if self.method.name not in METHODS_WITH_SEA:
            return self
        encoder, window = self.model.encoder, self.method.sea.window
        rows, cols = ENCODER_FACTS[encoder][1]
        if window > min(rows, cols):
            raise ValueError(
                f"method.sea.window {window} is larger than the {rows} x {cols} patch grid of model.encoder "
                f"'{encoder}'; use a window of at most {min(rows, cols)} (the paper uses 2)"
            )
        return self

    def identity_exclude(self) -> set[str]:
        """A stage that is switched off (and its data), or evaluation when it is off, does not change what a
        trial computes."""
        out = set() if self.stage2.enabled else {"stage2", "data.stage2"}
        if not self.eval.enabled:
            out.add("eval")
        return out

    @model_validator(mode="after")
    def _batch_divides(self) -> TrialConfig:
        w = self.resources.num_workers
        for name in ("stage1", "stage2"):
            s = getattr(self, name)
            per_step = s.micro_batch_size * w
            if s.enabled and s.global_batch_size % per_step:
                raise ValueError(
                    f"{name}.global_batch_size {s.global_batch_size} is not a multiple of micro_batch_size "
                    f"{s.micro_batch_size} x resources.num_workers {w} = {per_step}; pick a global batch that "
                    "is, since gradient accumulation covers the rest"
                )
        if not (self.stage1.enabled or self.stage2.enabled):
            raise ValueError(
                "stage1.enabled and stage2.enabled are both false: the trial would train nothing"
            )
        return self
