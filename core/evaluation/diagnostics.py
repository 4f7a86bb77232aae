"""Alignment diagnostics of a trained adapter (REFERENCE.md section 5): metrics on a held-out caption set.

The held-out set is core/evaluation/heldout.py, the pictures core/evaluation/pictures.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from core.config import EvalConfig
from core.evaluation.heldout import Heldout, load_heldout
from core.evaluation.names import LABEL_RECALL, MODALITY_GAP, TACS, diag_name
from core.metrics.alignment import LabelRecallCounts, label_recall_counts, modality_gap, nearest_words, tacs

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

# ---------------------------------------------------------------------------------------------------------
# Label recall over a labelled training-style dataset (used by the SEA tests)
# ---------------------------------------------------------------------------------------------------------


def _stack_images(items: list[dict[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor]:
    kept = [it for it in items if it.get("has_image") and it.get("pixel_values") is not None]
    if not kept:
        return None, torch.empty(0)
    return torch.stack([it["pixel_values"] for it in kept]), torch.stack([it["label_index"] for it in kept])


@torch.no_grad()
def label_recall(vlm: VLM, dataset: Any, word_embeddings: torch.Tensor, *, batch_size: int = 32) -> float:
    """Label recall@1: share of labelled visual tokens whose nearest word (by the LLM's embeddings) is a label.

    `dataset` yields items with `pixel_values`, `has_image` and `label_index` (a core.labels.WithLabels);
    `word_embeddings` are the label embeddings (Eq. 10) of the store's word list, in its order.
    """
    was_training = vlm.training
    vlm.eval()
    total = LabelRecallCounts(0, 0)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_stack_images)
    for pixels, label_index in loader:
        if pixels is None:
            continue
        visual = vlm.encode_images(pixels)
        nearest, _ = nearest_words(visual.float(), word_embeddings.float())
        total = total + label_recall_counts(nearest, label_index)
    vlm.train(was_training)
    return total.recall


@dataclass
class DiagnosticsResult:
    """Metrics and the tensors behind them (for pictures): all on the CPU, float32."""

    metrics: dict[str, float]
    visual: torch.Tensor  # [N, m, D]
    word_embeddings: torch.Tensor | None  # [q, D]
    nearest: torch.Tensor | None  # [N, m] indices into words
    words: list[str] | None
    label_index: torch.Tensor | None  # [N, m, n] indices into words


@torch.no_grad()
def visual_tokens(vlm: VLM, pixel_values: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The adapter's visual tokens `[N, m, D]` (float32, CPU) of preprocessed images, in eval mode."""
    from core.evaluation.generate import eval_mode

    device, dtype = vlm.vision.device, vlm.vision.dtype
    out = []
    with eval_mode(vlm):
        for start in range(0, pixel_values.shape[0], batch_size):
            chunk = pixel_values[start : start + batch_size].to(device=device, dtype=dtype)
            out.append(vlm.encode_images(chunk).float().cpu())
    return torch.cat(out)


def _remap(label_index: torch.Tensor, source: Sequence[str], target: Sequence[str]) -> torch.Tensor:
    """Re-express word indices into `source` as indices into `target` (-1 where the word is absent)."""
    position = {w: k for k, w in enumerate(target)}
    table = torch.tensor([position.get(w, -1) for w in source] + [-1], dtype=torch.long)
    return table[label_index.clamp(min=-1)]  # -1 picks the trailing -1


@torch.no_grad()
def compute_diagnostics(
    vlm: VLM,
    tokenizer: Tokenizer,
    heldout: Heldout,
    words: Sequence[str] | None = None,
    *,
    k: int = 10,
    batch_size: int = 64,
) -> DiagnosticsResult:
    """TACS, modality gap and label recall@1 on `heldout`, and the tensors they came from.

    - tacs: SEA Eq. 14 per image against the LLM input embeddings of its caption's tokens, averaged.
    - modality_gap: Eq. 5 over all visual tokens, against the label embeddings (Eq. 10) of `words`.
    - label_recall: share of labelled visual tokens whose nearest word (Eq. 4) is one of the patch's
      labels. `words` defaults to the held-out set's own list; labels of words missing from a list
      given here do not count. Keys that cannot be computed (no word list, no labels) are left out.
    """
    from core.sea import label_embeddings

    visual = visual_tokens(vlm, heldout.pixel_values, batch_size=batch_size)
    embedding = vlm.input_embeddings()
    device = embedding.weight.device
    text = embedding(heldout.caption_ids.to(device)).float().cpu()
    metrics = {TACS: float(tacs(visual, text, k=k, text_mask=heldout.caption_mask).mean())}
    words = list(words) if words is not None else heldout.words
    word_emb = nearest = label_index = None
    if words:
        word_emb = label_embeddings(words, tokenizer, embedding).float().cpu()
        metrics[MODALITY_GAP] = modality_gap(visual, word_emb)
        nearest, _ = nearest_words(visual, word_emb)
        if heldout.label_index is not None and heldout.words is not None:
            label_index = heldout.label_index
            if list(words) != list(heldout.words):
                label_index = _remap(label_index, heldout.words, words)
            counts = label_recall_counts(nearest, label_index)
            if counts.labelled:
                metrics[LABEL_RECALL] = counts.recall
    return DiagnosticsResult(metrics, visual, word_emb, nearest, words, label_index)


def alignment_diagnostics(
    vlm: VLM,
    tokenizer: Tokenizer,
    heldout: Heldout,
    words: Sequence[str] | None = None,
    *,
    k: int = 10,
    batch_size: int = 64,
) -> dict[str, float]:
    """`{"tacs", "modality_gap", "label_recall"}` on `heldout` (see `compute_diagnostics`); cheap enough
    to call every few training steps. The model's train/eval flags are restored afterwards."""
    return compute_diagnostics(vlm, tokenizer, heldout, words, k=k, batch_size=batch_size).metrics


CURVE_FILE = "diagnostics_curve.jsonl"


class DiagnosticsProbe:
    """Diagnostics every N training steps: built once (held-out set loaded), then called with the step.

    `probe(vlm, step)` returns `{"diag/tacs", "diag/modality_gap", "diag/label_recall"}` and, when
    `curve_path` is set, appends `{"step", ...metrics}` as a JSON line there, so the evaluation step (another
    process) can draw the curve: `evaluate(..., tacs_curve=read_curve(curve_path))`. Call it on one rank
    only; it runs the unwrapped model (no DDP collectives), which ZeRO-3 partitioned weights would not allow.
    """

    def __init__(
        self,
        eval_cfg: EvalConfig,
        vlm: VLM,
        tokenizer: Tokenizer,
        *,
        words: Sequence[str] | None = None,
        curve_path: str | Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.words = list(words) if words is not None else None
        self.k = eval_cfg.diagnostics.tacs_k
        self.every = eval_cfg.diagnostics.every_steps
        self.heldout = load_heldout(eval_cfg, vlm, tokenizer)
        self.curve_path = Path(curve_path) if curve_path is not None else None

    def due(self, step: int) -> bool:
        """Whether `step` is one of the every_steps multiples (never when every_steps is unset)."""
        return self.every is not None and self.every != 0 and step % int(self.every) == 0

    def __call__(self, vlm: VLM, step: int) -> dict[str, float]:
        found = alignment_diagnostics(vlm, self.tokenizer, self.heldout, self.words, k=self.k)
        if self.curve_path is not None:
            self.curve_path.parent.mkdir(parents=True, exist_ok=True)
            with self.curve_path.open("a") as f:
                f.write(json.dumps({"step": int(step), **found}) + "\n")
        return {diag_name(k): v for k, v in found.items()}


def read_curve(path: str | Path, metric: str = TACS) -> list[tuple[int, float]]:
    """(step, value) points of `metric` from a probe's curve file, by step; a step logged twice (a resumed
    run) keeps its last value. A missing file gives []."""
    path = Path(path)
    if not path.is_file():
        return []
    points: dict[int, float] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if metric in row:
            points[int(row["step"])] = float(row[metric])
    return sorted(points.items())


@torch.no_grad()
def caption_embeddings(vlm: VLM, heldout: Heldout) -> torch.Tensor:
    """LLM input embeddings of the distinct caption tokens of the held-out set `[T, D]` (float32, CPU)."""
    embedding = vlm.llm.get_input_embeddings()
    ids = heldout.caption_ids[heldout.caption_mask].unique()
    return embedding(ids.to(embedding.weight.device)).float().cpu()
