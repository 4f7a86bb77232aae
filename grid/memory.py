"""Estimated peak GPU memory per worker of each training stage, and the settings that would make a trial fit.

Everything is counted in bytes per worker (GiB = 2**30 bytes when shown), for the settings a GPU run
resolves `auto` to (core.train: ZeRO stage, precision, gradient checkpointing). With N_t trained and N_f
frozen parameters, W workers, and ZeRO dividing what it shards by W:

* weights: frozen ones in the compute dtype (2 bytes bf16, 4 fp32); trained ones in bf16 under DeepSpeed
  (its `bf16` section), in fp32 on the plain path (they are the master). Divided by W under ZeRO-3; none
  on the GPU with `offload: optimizer+params`.
* gradients: of the trained weights, in their dtype; divided by W from ZeRO-2 on; none on the GPU with an
  optimizer offload (the partitions live with the optimizer on the CPU).
* optimizer: Adam's two fp32 moments (8 bytes) plus DeepSpeed's fp32 master copy (4 bytes; none on the
  plain path or under ZeRO-3 fp32, where the weights are the master); divided by W from ZeRO-1 on; none
  with an offload.
* buffers: ZeRO-3's gathered working set (the layer being computed and the one prefetched, or the
  embedding table when larger, in the compute dtype); ZeRO-2/3's double-buffered reduce bucket (hidden^2
  elements); on the plain path DDP's gradient buckets (one more fp32 gradient copy) with more than one
  worker, and under bf16 autocast the bf16 copy of each trained weight kept for backward.
* activations, per token of the micro-batch, of one LLM layer with hidden h, attention widths q (query)
  and kv (key/value), MLP width f, in bf16 bytes (fp32 doubles them), counting what autograd saves:
    trained LLM: 16h + 6q + 4kv + 8f  (each RMSNorm: its fp32 input 4h, normalised 2h and output 2h;
                 SDPA's q, k, v and output, o_proj's input; the gated MLP's gate, act, up and product)
    frozen LLM (stage 1, gradients flow to the inputs only): 8h + 4q + 4kv + 6f  (the norms' fp32
                 inputs, SDPA's tensors, the MLP's gate, act and up)
  over L layers: tokens x L x per-layer; with gradient checkpointing: tokens x (L x 2h + per-layer), each
  layer's bf16 input plus one layer recomputed at a time. A trained vision tower adds
  tokens x L_v x (18 h_v + 4 f_v) (LayerNorms, attention, a plain GELU MLP); the frozen one none.
* logits: 3 x 4 bytes x vocabulary x rows: fp32 logits, their log-softmax and its gradient for one chunk
  of the supervised positions (core.models.lm_loss: the LM head runs on supervised positions only, a
  chunk at a time, each chunk recomputed in backward), rows = min(supervised tokens x micro-batch, the
  chunk `default_chunk(vocabulary)`).

What is left out: the CUDA context and allocator fragmentation (`USABLE_FRACTION` of the GPU is
planned for), the adapter's and the embedding layer's activations (under 0.3 GiB at 7B), the frozen
tower's forward (freed at once). Sequence lengths are the worst micro-batch of each stage
(`SEQUENCE_TEXT_TOKENS`): micro-batches are padded to their longest sample, and one that does not fit
ends the run.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.config import TrialConfig
from core.models.constants import default_chunk
from core.stages import STAGES as CORE_STAGES

GIB = 2**30
USABLE_FRACTION = 0.9  # of the GPU's memory: the rest for the CUDA context, NCCL and fragmentation
# Text tokens of the longest micro-batch: stage 1's captions (plain template) stay under 128 tokens;
# stage 2 pads to the longest conversation, up to the LLM's max_length (visual tokens included).
SEQUENCE_TEXT_TOKENS = {"stage1": 128, "stage2": None}
ADAM_BYTES = 8
MASTER_BYTES = 4
STAGES = ("stage1", "stage2")


@dataclass(frozen=True)
class ModelFacts:
    """Sizes the memory model needs, from the registries (core.models.llm, core.models.vision)."""

    llm_params: float
    hidden: int
    q_dim: int
    kv_dim: int
    ffn: int
    layers: int
    vocab: int
    max_length: int
    encoder_params: float
    encoder_hidden: int
    encoder_ffn: int
    encoder_layers: int
    visual_tokens: int  # the adapter's output tokens per image
    encoder_tokens: int  # the tower's own sequence (patches and prefix tokens)
    adapter_params: float

    @property
    def layer_params(self) -> float:
        """One decoder layer: attention projections, the gated MLP, two norms."""
        h = self.hidden
        return 2 * h * self.q_dim + 2 * h * self.kv_dim + 3 * h * self.ffn + 2 * h


@dataclass(frozen=True)
class StageSettings:
    """How a stage runs, as resolved for GPUs: what its memory depends on."""

    stage: str
    zero: int | None  # None: plain PyTorch (DDP)
    offload: str
    precision: str
    checkpointing: bool
    micro_batch: int
    world: int
    train_vision: bool = False


@dataclass(frozen=True)
class StageMemory:
    """Estimated peak bytes per worker, by what holds them."""

    weights: float
    gradients: float
    optimizer: float
    buffers: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return sum(dataclasses.astuple(self))

    def gib(self) -> dict[str, float]:
        """Each part and the total in GiB."""
        return {**{k: v / GIB for k, v in dataclasses.asdict(self).items()}, "total": self.total / GIB}


def model_facts(llm_id: str, encoder_id: str, adapter: str) -> ModelFacts:
    """The registry facts of a trial's model."""
    from core.models.llm import get_llm_spec
    from core.models.vision import get_encoder_spec, vision_arch

    llm, enc = get_llm_spec(llm_id), get_encoder_spec(encoder_id)
    arch = llm.arch
    heads = arch["num_attention_heads"]
    head_dim = arch.get("head_dim") or llm.hidden_size // heads
    v = vision_arch(enc)
    v_hidden = enc.feature_dim
    v_ffn = v.get("intermediate_size") or int(v.get("mlp_ratio", 4) * v_hidden)
    v_layers = v.get("num_hidden_layers", 0)
    v_tokens = enc.num_patches + enc.num_prefix_tokens
    enc_params = v_layers * (4 * v_hidden**2 + 2 * v_hidden * v_ffn) + v_tokens * v_hidden
    enc_params += 3 * enc.patch_size**2 * v_hidden
    d = llm.hidden_size
    adapter_params = enc.feature_dim * d + d + (d * d + d if adapter == "mlp2x_gelu" else 0)
    return ModelFacts(
        llm_params=(llm.params_b or 0.0) * 1e9,
        hidden=d,
        q_dim=heads * head_dim,
        kv_dim=arch.get("num_key_value_heads", heads) * head_dim,
        ffn=arch["intermediate_size"],
        layers=llm.num_layers,
        vocab=llm.vocab_size,
        max_length=llm.max_length,
        encoder_params=enc_params,
        encoder_hidden=v_hidden,
        encoder_ffn=v_ffn,
        encoder_layers=v_layers,
        visual_tokens=enc.num_patches,
        encoder_tokens=v_tokens,
        adapter_params=adapter_params,
    )


def sequence(facts: ModelFacts, stage: str) -> tuple[int, int]:
    """(tokens per sample, supervised tokens per sample) of a stage's longest micro-batch."""
    text = SEQUENCE_TEXT_TOKENS[stage]
    total = facts.max_length if text is None else min(facts.max_length, facts.visual_tokens + text)
    return total, total - facts.visual_tokens


def layer_activation_bytes(facts: ModelFacts, *, trained: bool) -> int:
    """bf16 bytes autograd keeps per token for one LLM layer (module docstring)."""
    h, q, kv, f = facts.hidden, facts.q_dim, facts.kv_dim, facts.ffn
    if trained:
        return 16 * h + 6 * q + 4 * kv + 8 * f
    return 8 * h + 4 * q + 4 * kv + 6 * f


def stage_memory(
    facts: ModelFacts, s: StageSettings, *, tokens: int | None = None, supervised: int | None = None
) -> StageMemory:
    """The estimated peak per worker of one stage; `tokens`/`supervised` per sample default to `sequence`."""
    default_tokens, default_supervised = sequence(facts, s.stage)
    tokens = default_tokens if tokens is None else tokens
    supervised = default_supervised if supervised is None else supervised
    deepspeed, low = s.zero is not None, 2 if s.precision == "bf16" else 4
    zero = s.zero or 0
    trains_llm = CORE_STAGES[s.stage].trains_llm
    trained = facts.adapter_params + (facts.llm_params if trains_llm else 0.0)
    trained += facts.encoder_params if s.train_vision else 0.0
    frozen = facts.llm_params + facts.encoder_params + facts.adapter_params - trained
    trained_bytes = 2 if deepspeed and low == 2 else 4  # DeepSpeed bf16 trains bf16 weights
    w_div = s.world if zero == 3 else 1
    g_div = s.world if zero >= 2 else 1
    o_div = s.world if zero >= 1 else 1
    offload_opt = s.offload != "none"
    weights = 0.0 if s.offload == "optimizer+params" else (low * frozen + trained_bytes * trained) / w_div
    gradients = 0.0 if offload_opt else trained_bytes * trained / g_div
    master = MASTER_BYTES if deepspeed and (low == 2 or zero in (1, 2)) else 0
    optimizer = 0.0 if offload_opt else (ADAM_BYTES + master) * trained / o_div
    buffers = _buffers(facts, s, low, trained)
    micro_tokens = s.micro_batch * tokens
    scale = low / 2
    per_layer = layer_activation_bytes(facts, trained=trains_llm)
    if s.checkpointing:
        llm_acts = micro_tokens * (facts.layers * 2 * facts.hidden + per_layer)
    else:
        llm_acts = micro_tokens * facts.layers * per_layer
    tower = 18 * facts.encoder_hidden + 4 * facts.encoder_ffn
    tower_acts = s.micro_batch * facts.encoder_tokens * facts.encoder_layers * tower if s.train_vision else 0
    logits = 3 * 4 * facts.vocab * min(supervised * s.micro_batch, default_chunk(facts.vocab))
    return StageMemory(weights, gradients, optimizer, buffers, scale * (llm_acts + tower_acts), logits)


def _buffers(facts: ModelFacts, s: StageSettings, low: int, trained: float) -> float:
    """ZeRO-3's gathered layers, ZeRO-2/3's reduce buckets; on the plain path DDP's gradient buckets and,
    under bf16 autocast, the bf16 copy of each trained weight autograd keeps (core.train.precision)."""
    zero = s.zero or 0
    out = 0.0
    if zero == 3:
        out += 2 * low * max(facts.layer_params, facts.vocab * facts.hidden)
    if zero >= 2:
        out += 2 * facts.hidden**2 * low
    if s.zero is None:
        out += 4 * trained if s.world > 1 else 0
        out += 2 * trained if low == 2 else 0
    return out


def stage_settings(cfg: TrialConfig, stage: str) -> StageSettings:
    """A stage's settings as a GPU run resolves them."""
    from core.models.llm import resolve_gradient_checkpointing
    from core.train.deepspeed_engine import resolve_zero
    from core.train.precision import resolve_precision

    st = getattr(cfg, stage)
    zero = resolve_zero(st.deepspeed.zero, stage, cfg.model.llm, use_gpu=True)
    return StageSettings(
        stage=stage,
        zero=zero,
        offload=st.deepspeed.offload if zero is not None else "none",
        precision=resolve_precision(st.precision, use_gpu=True),
        checkpointing=resolve_gradient_checkpointing(st.gradient_checkpointing, cfg.model.llm),
        micro_batch=st.micro_batch_size,
        world=cfg.resources.num_workers,
        train_vision=CORE_STAGES[stage].trains_llm and cfg.stage2.train_vision,
    )


def trial_memory(cfg: TrialConfig) -> dict[str, StageMemory]:
    """The estimate of each enabled stage of a trial."""
    facts = model_facts(cfg.model.llm, cfg.model.encoder, cfg.model.adapter)
    return {
        name: stage_memory(facts, stage_settings(cfg, name)) for name in STAGES if getattr(cfg, name).enabled
    }


def usable_bytes(cfg: TrialConfig) -> float:
    return USABLE_FRACTION * cfg.resources.gpu_memory_gb * GIB


@dataclass(frozen=True)
class Fix:
    """A change of settings (dotted paths of the trial config) and the stage's estimate with it."""

    stage: str
    settings: Mapping[str, Any]
    total_gib: float

    def text(self) -> str:
        changes = ", ".join(f"{k}: {v}" for k, v in self.settings.items())
        return f"{changes} (about {self.total_gib:.1f} GiB)"


def fixes(cfg: TrialConfig, stage: str) -> list[Fix]:
    """Settings that would make `stage` fit, each tried in the model: every single change that fits (of the
    micro-batches, the largest); when none does alone, the combination with the fewest changes (then the
    largest micro-batch). Empty when nothing fits."""
    facts = model_facts(cfg.model.llm, cfg.model.encoder, cfg.model.adapter)
    base, limit = stage_settings(cfg, stage), usable_bytes(cfg)
    options = _options(base, getattr(cfg, stage).global_batch_size)
    fitting: list[tuple[tuple[int, int], Fix]] = []
    for combo in itertools.product(*options):
        changes = {path: value for part in combo for path, value in part[0].items()}
        settings = dataclasses.replace(base, **{k: v for part in combo for k, v in part[1].items()})
        zero = settings.zero or 0
        if (zero < 3 and settings.offload == "optimizer+params") or (
            zero == 0 and settings.offload != "none"
        ):
            continue  # what DeepSpeedSettings would refuse
        total = stage_memory(facts, settings).total
        if changes and total <= limit:
            fix = Fix(stage, {f"{stage}.{k}": v for k, v in changes.items()}, total / GIB)
            fitting.append(((sum(bool(part[0]) for part in combo), -settings.micro_batch), fix))
    singles = [fix for (n, _), fix in fitting if n == 1]
    micro_key = f"{stage}.micro_batch_size"
    best_micro = [f for f in singles if micro_key in f.settings][:1]
    singles = [f for f in singles if micro_key not in f.settings] + best_micro
    if singles:
        return sorted(singles, key=_fix_order)
    return [min(fitting, key=lambda pair: pair[0])[1]] if fitting else []


def _options(base: StageSettings, global_batch: int) -> list[list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Per knob, its choices as (settings paths changed, StageSettings fields): the first keeps the trial's."""
    keep: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    checkpointing = [keep] + (
        [({"gradient_checkpointing": True}, {"checkpointing": True})] * (not base.checkpointing)
    )
    micro = [keep] + [
        ({"micro_batch_size": m}, {"micro_batch": m})
        for m in _smaller_micro_batches(base.micro_batch, base.world, global_batch)
    ]
    zero = [keep] + ([({"deepspeed.zero": 3}, {"zero": 3})] if (base.zero or 0) < 3 else [])
    offload = [keep] + [
        ({"deepspeed.offload": o}, {"offload": o})
        for o in ("optimizer", "optimizer+params")
        if o != base.offload
    ]
    if base.offload == "optimizer+params":
        offload = [keep]
    return [checkpointing, micro, zero, offload]


_KNOBS = ("gradient_checkpointing", "micro_batch_size", "deepspeed.zero", "deepspeed.offload")


def _fix_order(fix: Fix) -> int:
    """Cheapest first: recomputation, then accumulation, then sharding, then the CPU."""
    first = next(iter(fix.settings)).split(".", 1)[1]
    return _KNOBS.index(first)


def _smaller_micro_batches(micro: int, world: int, global_batch: int) -> list[int]:
    """Micro-batches below `micro` that still divide the global batch over the workers, largest first."""
    return [m for m in range(micro - 1, 0, -1) if global_batch % (m * world) == 0]


def memory_columns(cfg: TrialConfig) -> dict[str, str]:
    """The plan table's columns: estimated peak GiB per worker of stage 1/stage 2, and whether it fits."""
    if cfg.resources.gpus_per_worker <= 0:
        return {"peak GiB": "-", "fits": "-"}
    memory = trial_memory(cfg)
    peaks = "/".join(f"{memory[s].total / GIB:.1f}" if s in memory else "-" for s in STAGES)
    unfit = [s for s, m in memory.items() if m.total > usable_bytes(cfg)]
    return {"peak GiB": peaks, "fits": f"no: {', '.join(unfit)}" if unfit else "yes"}


class UnfitTrialError(ValueError):
    """A trial whose estimated peak memory exceeds its GPU's."""


def refuse_if_unfit(trial_configs: Mapping[str, TrialConfig]) -> None:
    """Raise UnfitTrialError naming every GPU trial (by id) that cannot fit, and what would make it fit."""
    problems = unfit_findings(trial_configs)
    if problems:
        raise UnfitTrialError("\n".join(problems))


def unfit_findings(trial_configs: Mapping[str, TrialConfig]) -> list[str]:
    """One sentence per GPU trial stage whose estimated peak exceeds its GPU's memory, with the fixes."""
    problems = []
    for trial_id, cfg in trial_configs.items():
        if cfg.resources.gpus_per_worker <= 0:
            continue
        limit = usable_bytes(cfg)
        for stage, memory in trial_memory(cfg).items():
            if memory.total <= limit:
                continue
            found = fixes(cfg, stage)
            hint = (
                "; ".join(f.text() for f in found) if found else "no setting fits: use GPUs with more memory"
            )
            parts = ", ".join(f"{k} {v:.1f}" for k, v in memory.gib().items() if k != "total")
            problems.append(
                f"trial {trial_id} {stage}: about {memory.total / GIB:.1f} GiB per GPU ({parts}) > "
                f"{limit / GIB:.1f} GiB usable of resources.gpu_memory_gb {cfg.resources.gpu_memory_gb:g}; "
                f"would fit with: {hint}"
            )
    return problems
