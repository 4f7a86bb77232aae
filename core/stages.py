"""The training stages as an explicit registry: what each trains, on what data, with which template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.config import DatasetConfig, MethodConfig, StageConfig, TrialConfig

StageName = Literal["stage1", "stage2"]


@dataclass(frozen=True)
class StageKind:
    """Facts about one LLaVA-1.5 training stage (torch-free: the plan and the estimate read them too).

    `chat`: False trains on the `plain` template (captions), True on the chat template (`stage2.template`
    or the LLM's own). `trains_llm`: the LLM is trained and saved (`llm/`). `zero_auto`: the ZeRO stage
    `auto` means on GPUs (None: the LLM's registry stage). `flops_per_param_token` / `text_tokens`: the
    GPU-hour estimate's k and typical text length (grid.estimate). `diag_suffix`: how diagnostics after
    this stage are named (`diag/<metric><suffix>`); only a stage with `curve` logs them while training.
    """

    name: StageName
    data_kind: Literal["captions", "instructions"]
    image_mode: Literal["square", "pad"]
    chat: bool
    trains_llm: bool
    sea_applies: bool
    zero_auto: int | None
    flops_per_param_token: float
    text_tokens: int
    curve: bool
    diag_suffix: str

    def settings(self, cfg: TrialConfig) -> StageConfig:
        return getattr(cfg, self.name)

    def dataset(self, cfg: TrialConfig) -> DatasetConfig:
        return getattr(cfg.data, self.name)

    def template(self, cfg: TrialConfig, llm_chat_template: str) -> str:
        """The prompt template this stage trains with."""
        return (cfg.stage2.template or llm_chat_template) if self.chat else "plain"

    def basic_applies(self, method: MethodConfig) -> bool:
        return bool(getattr(method.basic, self.name))


STAGES: dict[str, StageKind] = {
    "stage1": StageKind(
        name="stage1",
        data_kind="captions",
        image_mode="square",
        chat=False,
        trains_llm=False,
        # SEA aligns against label embeddings that are constants only while the LLM is frozen.
        sea_applies=True,
        zero_auto=2,
        # The frozen LLM backpropagates activations only: ~4 N FLOPs per token.
        flops_per_param_token=4.0,
        text_tokens=64,
        curve=True,
        diag_suffix="",
    ),
    "stage2": StageKind(
        name="stage2",
        data_kind="instructions",
        image_mode="pad",
        chat=True,
        trains_llm=True,
        sea_applies=False,
        zero_auto=None,
        flops_per_param_token=6.0,
        text_tokens=400,
        curve=False,
        diag_suffix="/after_stage2",
    ),
}


def enabled_stages(cfg: TrialConfig) -> list[StageKind]:
    """The stages a trial runs, in order."""
    return [kind for kind in STAGES.values() if kind.settings(cfg).enabled]
