"""What defines a trial stage's transformers export (a step of the trial's graph; torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config import NOT_IDENTITY, ModelConfig, Strict, TrialConfig
from core.stages import StageName

# Bumped when what an export writes changes in a way older exports cannot serve.
EXPORT_FORMAT = 1


class ExportStepConfig(Strict):
    """The model (its stage's outputs are a dependency), the preprocessing and chat template the export's
    processor reproduces. The trial rides along for the model card only (never part of the hash)."""

    stage: StageName
    model: ModelConfig
    image_mode: Literal["pad", "square"]
    template: str
    format: int = EXPORT_FORMAT
    trial: TrialConfig = Field(json_schema_extra=NOT_IDENTITY)


def export_config(cfg: TrialConfig, stage: StageName) -> ExportStepConfig:
    """The export of `cfg` after `stage`: its evaluation's image mode and the chat template it answers in
    (the trial's `stage2.template`, else the LLM's own), whichever stage it follows."""
    from core.models.llm import get_llm_spec

    template = cfg.stage2.template or get_llm_spec(cfg.model.llm).chat_template
    return ExportStepConfig(
        stage=stage, model=cfg.model, image_mode=cfg.eval.image_mode, template=template, trial=cfg
    )
