"""What a finished stage leaves in its step directory: the trained weights later steps load, and result.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.config.methods import FINAL_LOSS, TOTAL_LOSS
from core.stages import STAGES
from core.train.checkpoint import trainable_state
from core.train.job import RESULT_FILE
from core.train.loop import LoopResult
from core.train.steppers import Stepper

if TYPE_CHECKING:
    from core.methods.objective import Objective
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


def stage_result(
    done: LoopResult, *, steps: int, samples: int, zero: int | None, heldout: dict[str, float]
) -> dict[str, Any]:
    """The stage's summary: first and final loss, its size, where it resumed, every final loss term
    (`final_loss_lm`, ...) and the held-out L_lm (`final_heldout_lm`) when it holds data out."""
    result: dict[str, Any] = {
        "first_loss": done.position.first_loss,
        FINAL_LOSS: done.last.get(TOTAL_LOSS),
        "steps": steps,
        "samples": samples,
        "resumed_from_step": done.resumed_from,
        "zero": zero,
    }
    result.update({f"final_{k.replace('/', '_')}": v for k, v in done.last.items() if k != TOTAL_LOSS})
    result.update(heldout)
    return result


def write_result(step_dir: Path, result: dict[str, Any], *, rank: int) -> None:
    """Rank 0 writes `result.json`, what the grid reads as the stage's summary."""
    if rank == 0:
        (step_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))


def save_outputs(
    step_dir: Path,
    stage: str,
    vlm: VLM,
    tokenizer: Tokenizer,
    objective: Objective,
    stepper: Stepper,
    *,
    rank: int,
    train_vision: bool,
    llm_dtype: torch.dtype = torch.float32,
) -> None:
    """What later steps load: the adapter (always), the LLM and tokenizer (stage 2), the vision tower's
    trained weights, the objective's parameters. Under ZeRO-3 the weights are gathered first (all ranks
    take part); rank 0 writes. The LLM is saved in `llm_dtype` (its compute dtype: a bf16 run's fp32
    masters are not kept, as LLaVA saves them) as safetensors, the only format transformers 5 writes."""
    from core.models import save_adapter

    with stepper.gathered(list(vlm.adapter.parameters()) + list(objective.parameters())):
        if rank == 0:
            save_adapter(vlm, step_dir / "adapter")
            if any(p.numel() for p in objective.parameters()):
                torch.save(objective.state_dict(), step_dir / "objective.pt")
    if STAGES[stage].trains_llm:
        llm_state = stepper.full_state_dict("vlm.llm.")  # ZeRO-3 only: consolidated on rank 0
        if rank == 0:
            save_llm(vlm.llm, llm_state, step_dir / "llm", llm_dtype)
            tokenizer.save_pretrained(step_dir / "llm")
        if train_vision:
            with stepper.gathered([p for p in vlm.vision.parameters() if p.requires_grad]):
                if rank == 0:
                    torch.save(trainable_state(vlm.vision), step_dir / "vision_trainable.pt")


def save_llm(llm: Any, state: dict[str, torch.Tensor] | None, out: Path, dtype: torch.dtype) -> None:
    """`save_pretrained` of `state` (default: the module's own) with floating tensors in `dtype`, copied
    to the CPU one at a time (no second copy of the model on the GPU); config.json names that dtype."""
    state = state if state is not None else llm.state_dict()
    cast = {
        k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()
        for k, v in state.items()
    }
    llm.save_pretrained(out, state_dict=cast)
    config = out / "config.json"
    saved = json.loads(config.read_text())
    saved["dtype"] = str(dtype).removeprefix("torch.")
    config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
