"""How a benchmark asks the model: batched, sharded or replayed generation and option scoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from core.data.images import preprocess_for
from core.evaluation.benchmarks.files import BenchFiles, ImageRef
from core.evaluation.generate import (
    Prompt,
    answer_ids,
    continuation_logliks,
    generation_prompt_ids,
    greedy_generate,
    pad_id,
    stop_token_ids,
)
from core.evaluation.shard import Shard, replayed

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


@dataclass
class RunContext:
    """What every runner needs besides the items: the model, its tokenizer and how to build inputs.

    Sharded evaluation (core/evaluation/shard.py): with `shard`, only that shard's batches reach the
    model (batch b of every model call belongs to shard b mod count, so each batch holds exactly the
    rows it holds unsharded and the outputs are bit for bit the same), the others get placeholders,
    and the outputs are kept in `recorded` (call number -> one output or None per row); with `replay`
    (the shards' gathered outputs) no model runs and the runner scores the recorded outputs.
    """

    vlm: VLM | None  # None when replaying: no model runs
    tokenizer: Tokenizer | None
    template: str
    image_mode: str = "pad"
    batch_size: int = 8
    max_new_tokens: int = 16
    image_root: Path | None = None
    shard: Shard | None = None
    files: BenchFiles = field(default_factory=BenchFiles)  # for messages naming the question file
    replay: dict[str, list[Any]] | None = None
    submission_dir: Path | None = None  # where `submission: true` benchmarks write their answer file
    recorded: dict[str, list[Any]] = field(default_factory=dict)
    calls: int = 0

    def _model(self) -> tuple[VLM, Tokenizer]:
        """The model and tokenizer; only the batches that run the model ask (never a replay)."""
        if self.vlm is None or self.tokenizer is None:
            raise RuntimeError("RunContext: a model call while replaying recorded outputs")
        return self.vlm, self.tokenizer

    def pixels(self, image: ImageRef | None, where: str) -> torch.Tensor | None:
        if image is None:
            return None
        spec = self._model()[0].vision.spec
        pil = image.open(self.image_root, where)
        return preprocess_for(pil, spec, self.image_mode)

    def prompt(self, question: str, image: ImageRef | None, where: str) -> Prompt:
        pixels = self.pixels(image, where)
        ids = generation_prompt_ids(self.template, question, self._model()[1], has_image=pixels is not None)
        return Prompt(ids, pixels)

    def _batched(self, rows: Sequence[Any], run: Callable[[Sequence[Any]], list[Any]]) -> list[Any] | None:
        """`run` over the rows in batches (this shard's only), recorded; None when replaying."""
        key = str(self.calls)
        self.calls += 1
        if self.replay is not None:
            return replayed(self.replay, key, len(rows))
        size = max(1, self.batch_size)
        outputs: list[Any] = []
        for batch, start in enumerate(range(0, len(rows), size)):
            chunk = rows[start : start + size]
            owned = self.shard is None or self.shard.owns(batch)
            outputs += run(chunk) if owned else [None] * len(chunk)
        self.recorded[key] = outputs
        return None

    def generate(self, questions: Sequence[tuple[str, ImageRef | None, str]]) -> list[str]:
        """Greedy answers (decoded, stripped) to (question, image, where) triples, in batches."""
        replay = self._batched(questions, self._generate_batch)
        answers = replay if replay is not None else self.recorded[str(self.calls - 1)]
        return [a if a is not None else "" for a in answers]

    def _generate_batch(self, questions: Sequence[tuple[str, ImageRef | None, str]]) -> list[str]:
        vlm, tokenizer = self._model()
        stops, pad = stop_token_ids(self.template, tokenizer), pad_id(tokenizer)
        chunk = [self.prompt(q, img, w) for q, img, w in questions]
        tokens = greedy_generate(
            vlm, chunk, max_new_tokens=self.max_new_tokens, stop_ids=stops, pad_token_id=pad
        )
        # One sequence decodes to one str (the stubs say str | list[str]).
        return [cast(str, tokenizer.decode(t, skip_special_tokens=True)).strip() for t in tokens]

    def option_scores(self, rows: Sequence[tuple[str, ImageRef | None, str, str]]) -> list[tuple[float, int]]:
        """(log-likelihood, token count) of each (question, image, where, option) row, in batches;
        each question's prompt (its image preprocessed) built once."""
        prompts: dict[tuple[str, str], Prompt] = {}

        def score(chunk: Sequence[tuple[str, ImageRef | None, str, str]]) -> list[tuple[float, int]]:
            for question, image, where, _ in chunk:
                if (question, where) not in prompts:
                    prompts[(question, where)] = self.prompt(question, image, where)
            vlm, tokenizer = self._model()
            return continuation_logliks(
                vlm,
                [prompts[(q, w)] for q, _, w, _ in chunk],
                [answer_ids(self.template, option, tokenizer) for *_, option in chunk],
                pad_token_id=pad_id(tokenizer),
            )

        replay = self._batched(rows, score)
        scored = replay if replay is not None else self.recorded[str(self.calls - 1)]
        return [(float(s[0]), int(s[1])) if s is not None else (0.0, 1) for s in scored]


def fill_prompt(prompt: str | None, question: str) -> str:
    """The benchmark's prompt with `{question}` filled in (or the question itself)."""
    # replace, not str.format: a user prompt may hold other braces (JSON examples, LaTeX).
    return question if prompt is None else prompt.replace("{question}", question)


def limit(items: list[Any], max_samples: int | None) -> list[Any]:
    """The first `max_samples` items (all of them for None)."""
    return items if max_samples is None else items[:max_samples]
