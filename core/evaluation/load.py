"""The model a training stage left, loaded frozen for evaluation; evaluation mode for one in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import ModelConfig

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


def eval_dtype(device: Any) -> Any:
    """The dtype a model loaded for evaluation is built in: bf16 on GPUs (as it trained: a stage's `auto`
    precision, core.train.precision), fp32 on CPUs."""
    import torch

    return torch.bfloat16 if torch.device(device or "cpu").type == "cuda" else torch.float32


def load_trained(
    model: ModelConfig, stage: str, stage_dirs: dict[str, str], device: Any = None, dtype: Any = None
) -> tuple[VLM, Tokenizer]:
    """The VLM as `stage` left it: stage 1's adapter on the original LLM, or stage 2's LLM, adapter and
    (when it trained) vision tower weights; every part loaded straight into `dtype` (default
    `eval_dtype(device)`), frozen (no parameter requires grad: evaluation keeps no autograd state)."""
    import torch

    from core.models import build_vlm, load_adapter
    from core.stages import STAGES

    dtype = dtype or eval_dtype(device)
    step_dir = Path(stage_dirs[stage])
    llm_path = str(step_dir / "llm") if STAGES[stage].trains_llm else model.llm_path
    vlm, tokenizer = build_vlm(
        model.llm,
        model.encoder,
        model.adapter,
        llm_path=llm_path,
        encoder_path=model.encoder_path,
        dtype=dtype,
    )
    load_adapter(vlm, step_dir / "adapter")
    vision = step_dir / "vision_trainable.pt"
    if vision.is_file():
        state = torch.load(vision, map_location="cpu")
        missing = set(state) - {n for n, _ in vlm.vision.named_parameters()}
        if missing:
            raise ValueError(f"{vision}: weights not in the vision tower: {sorted(missing)[:5]}")
        vlm.vision.load_state_dict(state, strict=False)
    vlm.eval()
    vlm.requires_grad_(False)
    if device is not None:
        vlm.to(device)
    return vlm, tokenizer


@contextmanager
def frozen_for_eval(vlm: VLM, *, inference: bool = False) -> Iterator[None]:
    """Evaluation mode with no autograd state: eval(), no parameter requiring grad (so autocast keeps no
    bf16 copy of any weight), no_grad, or inference_mode when the model is only evaluated (its tensors
    must never meet autograd later); bf16 autocast on CUDA for parts still in fp32 (a training
    worker's trainable weights). Flags restored afterwards."""
    import torch

    device = next(vlm.parameters()).device
    grads = [(p, p.requires_grad) for p in vlm.parameters()]
    was_training = vlm.training
    vlm.eval()
    vlm.requires_grad_(False)
    try:
        with (
            torch.inference_mode() if inference else torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            yield
    finally:
        for param, flag in grads:
            param.requires_grad_(flag)
        vlm.train(was_training)


def default_device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
