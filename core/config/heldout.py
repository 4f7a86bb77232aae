"""A stage's held-out split: a seeded fraction of its data never trained on, its L_lm evaluated every N steps."""

from __future__ import annotations

from pydantic import Field, model_validator

from core.config.base import Strict


class HeldoutConfig(Strict):
    """`fraction` of the stage's samples are held out (0: none). The split is seeded by the dataset's
    identity and `seed`, never by the trial's seed, so every trial of a search (and of a grid) on the same
    data holds out the same samples. Their language-modelling loss alone (`<stage>/heldout/lm`, no method
    term) is evaluated every `every_steps` optimizer steps and at the stage's end."""

    fraction: float = Field(0.0, ge=0, le=0.5, description="share of the stage's samples held out")
    every_steps: int | None = Field(
        None, ge=1, description="evaluate L_lm on the held-out split every N steps"
    )
    max_samples: int | None = Field(
        None, ge=1, description="evaluate on the split's first N samples only (a fixed subset; default all)"
    )
    seed: int = Field(0, description="the split's seed (with the dataset's identity; not the trial seed)")

    @model_validator(mode="after")
    def _needs_a_split(self) -> HeldoutConfig:
        if self.every_steps is not None and self.fraction == 0:
            raise ValueError("every_steps needs a held-out split: set fraction (e.g. 0.05)")
        return self

    @property
    def active(self) -> bool:
        return self.fraction > 0
