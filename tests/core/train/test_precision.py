"""Precision as LLaVA-1.5 trains: inside the DeepSpeed engine's forward bf16 is in force and the optimizer
keeps fp32 masters; why DeepSpeed's `bf16` section rather than autocast (what backward keeps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.train.deepspeed_engine import DeepSpeedStepper, deepspeed_config, init_distributed
from core.train.precision import loop_autocast, module_dtypes, resolve_precision

# The one-process group's MASTER_*/RANK variables are gone after each test (conftest.own_process_group).
pytestmark = pytest.mark.usefixtures("own_process_group")


class Probe(nn.Module):
    """Two linear layers that record, inside their forward, the weight dtype and a matmul output's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 1)
        self.seen: dict[str, torch.dtype] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.to(self.a.weight.dtype))  # as the VLM's towers cast pixel values to their dtype
        self.seen = {"weight": self.a.weight.dtype, "matmul": h.dtype}
        return self.b(torch.relu(h)).float().pow(2).mean()


def engine_step(precision: str, zero: int) -> tuple[Probe, DeepSpeedStepper]:
    torch.manual_seed(0)
    model = Probe()
    init_distributed(torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    config = deepspeed_config(
        zero=zero, micro_batch_size=4, accumulation=1, hidden_size=16, precision=precision
    )
    stepper = DeepSpeedStepper(model, optimizer, scheduler, config)
    x = torch.randn(4, 16)  # fp32 input, as the data loader gives pixel values
    stepper.micro_step(stepper.module(x))
    return model, stepper


@pytest.mark.parametrize("zero", [2, 3])
def test_bf16_is_in_force_inside_the_engine_with_fp32_masters(zero: int) -> None:
    model, stepper = engine_step("bf16", zero)
    assert model.seen == {"weight": torch.bfloat16, "matmul": torch.bfloat16}
    # The optimizer's master copy of the weights is fp32, and the bf16 parameter is that master rounded.
    opt = stepper.engine.optimizer
    masters = opt.fp32_partitioned_groups_flat if zero == 3 else opt.single_partition_of_fp32_groups
    assert {m.dtype for m in masters} == {torch.float32}
    if zero == 2:  # one rank: the partition is every trainable weight, flattened in order (then padded)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        master = masters[0].detach()[: flat.numel()]
        assert torch.equal(flat, master.to(torch.bfloat16))
        assert not torch.equal(flat.float(), master)  # the master holds more bits than its bf16 copy


def test_fp32_stays_fp32_inside_the_engine() -> None:
    model, _ = engine_step("fp32", 2)
    assert model.seen == {"weight": torch.float32, "matmul": torch.float32}


def test_autocast_keeps_a_bf16_copy_of_each_trained_weight_for_backward() -> None:
    """The measurement behind choosing the `bf16` section over `torch_autocast`: what autograd saves for
    backward. Under autocast with fp32 weights it is a fresh bf16 copy of each weight (ZeRO-3 cannot free
    it); with bf16 weights it is the parameter itself (ZeRO-3 frees and re-gathers it)."""
    h, layers, tokens = 64, 4, 8
    torch.manual_seed(0)
    fp32 = nn.Sequential(*[nn.Linear(h, h, bias=False) for _ in range(layers)])
    bf16 = nn.Sequential(*[nn.Linear(h, h, bias=False) for _ in range(layers)]).to(torch.bfloat16)

    def saved(model: nn.Module, x: torch.Tensor, autocast: bool) -> dict[str, int]:
        params = {p.data_ptr() for p in model.parameters()}
        out = {"parameters": 0, "other": 0}

        def pack(t: torch.Tensor) -> torch.Tensor:
            out["parameters" if t.data_ptr() in params else "other"] += t.numel() * t.element_size()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(x).float().sum()
        return out

    x = torch.randn(tokens, h)
    # Layers 2..4 need their weight for the input's gradient (layer 1's input needs none), and their
    # input for the weight's gradient: 3 weights of h*h and 4 inputs of tokens*h, 2 bytes each.
    weights, inputs = 3 * h * h * 2, layers * tokens * h * 2
    assert saved(fp32, x, autocast=True) == {"parameters": 0, "other": weights + inputs}
    assert saved(bf16, x.to(torch.bfloat16), autocast=False) == {"parameters": weights, "other": inputs}


def test_precision_settings() -> None:
    assert resolve_precision("auto", use_gpu=True) == "bf16"
    assert resolve_precision("auto", use_gpu=False) == "fp32"
    assert resolve_precision("bf16", use_gpu=False) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", use_gpu=True)
    ds = module_dtypes("bf16", deepspeed=True, train_llm=True, train_vision=False)
    assert (ds.llm, ds.vision, ds.adapter) == (torch.bfloat16,) * 3
    plain = module_dtypes("bf16", deepspeed=False, train_llm=False, train_vision=False)  # stage 1, DDP
    assert (plain.llm, plain.vision, plain.adapter) == (torch.bfloat16, torch.bfloat16, torch.float32)
    plain2 = module_dtypes("bf16", deepspeed=False, train_llm=True, train_vision=True)
    assert (plain2.llm, plain2.vision, plain2.adapter) == (torch.float32,) * 3
    with loop_autocast("bf16", torch.device("cpu"), deepspeed=False):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with loop_autocast("bf16", torch.device("cpu"), deepspeed=True):
        assert not torch.is_autocast_enabled("cpu")


def test_only_an_explicit_precision_enters_the_trial_identity() -> None:
    from core.config import TrialConfig
    from core.config.identity import identity_dict

    auto = identity_dict(TrialConfig())
    assert "precision" not in auto["stage1"]  # the ids trials had before the setting existed
    explicit = identity_dict(TrialConfig.model_validate({"stage1": {"precision": "fp32"}}))
    assert explicit["stage1"]["precision"] == "fp32"
    assert {k: v for k, v in explicit["stage1"].items() if k != "precision"} == auto["stage1"]
