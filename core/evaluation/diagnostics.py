"""Alignment diagnostics of a trained adapter (REFERENCE.md section 5): metrics on a held-out caption set, and pictures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader

from core.config import EvalConfig
from core.evaluation.names import LABEL_RECALL, MODALITY_GAP, TACS, diag_name
from core.metrics import LabelRecallCounts, label_recall_counts, modality_gap, nearest_words, tacs

# ---------------------------------------------------------------------------------------------------------
# Label recall over a labelled training-style dataset (used by the SEA tests)
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def label_recall(vlm: Any, dataset: Any, word_embeddings: torch.Tensor, *, batch_size: int = 32) -> float:
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


def _stack_images(items: list[dict[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor]:
    kept = [it for it in items if it.get("has_image") and it.get("pixel_values") is not None]
    if not kept:
        return None, torch.empty(0)
    return torch.stack([it["pixel_values"] for it in kept]), torch.stack([it["label_index"] for it in kept])


# ---------------------------------------------------------------------------------------------------------
# The held-out caption set
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Heldout:
    """Images with their captions (and, when known, per-patch label words), ready for the diagnostics.

    `label_index` `[N, m, n]` (-1 = empty slot) indexes `words`; None when no patch labels are known.
    Tensors stay on the CPU; each diagnostics call moves them to the model's device.
    """

    ids: list[str]
    image_paths: list[Path]
    captions: list[str]
    pixel_values: torch.Tensor  # [N, 3, S, S] float32
    caption_ids: torch.Tensor  # [N, n] long, 0 where padded
    caption_mask: torch.Tensor  # [N, n] bool, True = real token
    words: list[str] | None = None
    label_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _captions(captions: Sequence[str], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption token ids (no special tokens), right-padded, with their mask."""
    ids = tokenizer(list(captions), add_special_tokens=False).input_ids
    for caption, row in zip(captions, ids, strict=True):
        if not row:
            raise ValueError(f"held-out caption {caption!r} has no tokens; TACS needs at least one")
    width = max(len(r) for r in ids)
    out = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, r in enumerate(ids):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return out, mask


def _load_pixels(paths: Sequence[Path], vlm: Any) -> torch.Tensor:
    from core.data.images import preprocess

    spec = vlm.vision.spec
    tensors = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                # Square crop as in stage 1, the stage whose alignment these numbers describe.
                tensors.append(preprocess(image, spec.image_size, spec.mean, spec.std, "square"))
        except OSError as err:
            raise OSError(f"held-out image {path}: cannot read it ({err})") from err
    return torch.stack(tensors)


def synthetic_heldout(synthetic_dir: str | Path, vlm: Any, tokenizer: Any, samples: int) -> Heldout:
    """The held-out captions of a synthetic eval set, with ground-truth colour/shape words per patch."""
    from core.data import synthetic_eval as syn

    root = Path(synthetic_dir)
    records = json.loads((root / syn.HELDOUT_JSON).read_text())[:samples]
    truth = json.loads((root / syn.HELDOUT_OBJECTS).read_text())["samples"]
    if len(records) < samples:
        raise ValueError(
            f"{root / syn.HELDOUT_JSON} has {len(records)} held-out samples, {samples} asked; "
            "build the synthetic eval set with num_heldout >= diagnostics.heldout_samples"
        )
    paths = [root / syn.IMAGES_DIR / r["image"] for r in records]
    captions = [r["conversations"][1]["value"] for r in records]
    words = list(syn.SYNTHETIC_WORDS)
    grid = tuple(vlm.vision.spec.grid)
    rows = []
    for record, path in zip(records, paths, strict=True):
        with Image.open(path) as image:
            rows.append(syn.patch_word_labels(image, truth[record["id"]], grid, words))
    ids, mask = _captions(captions, tokenizer)
    return Heldout(
        ids=[r["id"] for r in records],
        image_paths=paths,
        captions=captions,
        pixel_values=_load_pixels(paths, vlm),
        caption_ids=ids,
        caption_mask=mask,
        words=words,
        label_index=syn.labels_tensor(rows),
    )


def files_heldout(
    json_path: str | Path,
    image_root: str | Path,
    vlm: Any,
    tokenizer: Any,
    samples: int,
    *,
    label_store: str | Path | None = None,
    words_file: str | Path | None = None,
) -> Heldout:
    """The first `samples` image records of a LLaVA-format JSON (caption = first gpt turn).

    With a label store (SEA labels of the same images on the model's patch grid), label recall uses its
    rows (looked up by sample id) and its word list; otherwise `words_file` supplies the nearest-word
    list, and without either only TACS is computed.
    """
    from core.labels.store import LabelStore
    from core.labels.words import read_word_list

    path = Path(json_path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"diagnostics.json_path={path}: cannot read a JSON list ({err})") from err
    if not isinstance(raw, list):
        raise ValueError(f"diagnostics.json_path={path}: expected a JSON list, got {type(raw).__name__}")
    records = []
    for k, record in enumerate(raw):
        if not isinstance(record, dict) or not record.get("image"):
            continue
        turns = record.get("conversations") or []
        caption = next(
            (t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None
        )
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(
                f"{path} record #{k} (id {record.get('id')!r}): no gpt turn to use as the caption"
            )
        records.append((str(record.get("id", k)), record["image"], caption.replace("<image>", "").strip()))
        if len(records) == samples:
            break
    if not records:
        raise ValueError(f"diagnostics.json_path={path}: no record with an image")
    paths = [Path(image_root) / image for _, image, _ in records]
    words: list[str] | None = None
    label_index = None
    if label_store is not None:
        store = LabelStore.open(label_store)
        if tuple(store.grid) != tuple(vlm.vision.spec.grid):
            raise ValueError(
                f"diagnostics.label_store={label_store}: labels on a {store.grid} patch grid, the model's "
                f"encoder has {tuple(vlm.vision.spec.grid)}; use labels transferred to this encoder's grid"
            )
        words = list(store.words)
        rows = []
        for sid, _, _ in records:
            try:
                rows.append(torch.from_numpy(store.by_id(sid)[0]).long())
            except KeyError:
                raise ValueError(
                    f"diagnostics.label_store={label_store}: no row for sample id {sid!r}"
                ) from None
        label_index = torch.stack(rows)
    elif words_file is not None:
        words = read_word_list(words_file)
    captions = [c for _, _, c in records]
    ids, mask = _captions(captions, tokenizer)
    return Heldout(
        ids=[sid for sid, _, _ in records],
        image_paths=paths,
        captions=captions,
        pixel_values=_load_pixels(paths, vlm),
        caption_ids=ids,
        caption_mask=mask,
        words=words,
        label_index=label_index,
    )


def load_heldout(
    eval_cfg: EvalConfig, vlm: Any, tokenizer: Any, *, synthetic_dir: str | Path | None = None
) -> Heldout:
    """The held-out set an EvalConfig's diagnostics describe (synthetic: generated on first use)."""
    diag = eval_cfg.diagnostics
    if diag.source == "files":
        return files_heldout(
            diag.json_path,
            diag.image_root,
            vlm,
            tokenizer,
            diag.heldout_samples,
            label_store=diag.label_store,
            words_file=diag.words_file,
        )
    if synthetic_dir is None:
        from core.data.synthetic_eval import ensure_synthetic_eval
        from core.evaluation.config import synthetic_spec

        synthetic_dir = ensure_synthetic_eval(synthetic_spec(eval_cfg))
    return synthetic_heldout(synthetic_dir, vlm, tokenizer, diag.heldout_samples)


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


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
def visual_tokens(vlm: Any, pixel_values: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
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
    vlm: Any,
    tokenizer: Any,
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
    embedding = vlm.llm.get_input_embeddings()
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
    vlm: Any,
    tokenizer: Any,
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
        vlm: Any,
        tokenizer: Any,
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
        return bool(self.every) and step % int(self.every) == 0

    def __call__(self, vlm: Any, step: int) -> dict[str, float]:
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


# ---------------------------------------------------------------------------------------------------------
# Pictures (matplotlib's Agg canvas directly: no pyplot, no global backend switch)
# ---------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def patch_words_picture(
    image: Image.Image,
    grid: tuple[int, int],
    patch_words: Sequence[str],
    path: str | Path,
    *,
    hits: Sequence[bool | None] | None = None,
    title: str = "nearest word per visual token",
) -> Path:
    """The image with each patch labelled by its visual token's nearest word (SEA Fig. 1a).

    `patch_words` is row-major, one per patch. `hits` (optional, per patch) colours a word green when it
    is one of the patch's labels, red when it is not, white when the patch has none.
    """
    h, w = grid
    if len(patch_words) != h * w:
        raise ValueError(f"patch_words has {len(patch_words)} entries, the {h}x{w} grid {h * w}")
    fig = _figure(8, 8.4)
    ax = fig.add_subplot()
    ax.imshow(image.convert("RGB"), extent=(0, w, h, 0))
    size = max(3.0, min(10.0, 160.0 / max(h, w)))
    for r in range(h):
        for c in range(w):
            hit = hits[r * w + c] if hits is not None else None
            colour = "white" if hit is None else ("#2ecc40" if hit else "#ff4136")
            ax.text(
                c + 0.5,
                r + 0.5,
                patch_words[r * w + c],
                ha="center",
                va="center",
                fontsize=size,
                color=colour,
                bbox={"facecolor": "black", "alpha": 0.75, "pad": 0.5, "linewidth": 0},
            )
    for x in range(w + 1):
        ax.axvline(x, color="white", linewidth=0.3, alpha=0.6)
    for y in range(h + 1):
        ax.axhline(y, color="white", linewidth=0.3, alpha=0.6)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Projection of `points` `[N, D]` on their first two principal components `[N, 2]` (float64).

    Eigen-decomposition of the smaller of the Gram and covariance matrices, so it stays cheap for
    thousands of points in a 4096-wide space. Component signs are fixed so that the largest-magnitude
    coordinate of each axis is positive (deterministic pictures).
    """
    x = points.double()
    x = x - x.mean(dim=0, keepdim=True)
    if x.shape[0] <= x.shape[1]:
        vals, vecs = torch.linalg.eigh(x @ x.T)
        top = vecs[:, -2:].flip(-1) * vals[-2:].flip(-1).clamp(min=0).sqrt()
    else:
        _, vecs = torch.linalg.eigh(x.T @ x)
        top = x @ vecs[:, -2:].flip(-1)
    if top.shape[1] < 2:
        top = torch.cat([top, torch.zeros(top.shape[0], 2 - top.shape[1], dtype=top.dtype)], dim=1)
    sign = torch.sign(top.gather(0, top.abs().argmax(dim=0, keepdim=True)))
    return top * torch.where(sign == 0, torch.ones_like(sign), sign)


def _subsample(x: torch.Tensor, limit: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, limit).long()]


def pca_picture(
    visual: torch.Tensor, text: torch.Tensor, path: str | Path, *, limit: int = 2000, title: str = ""
) -> Path:
    """Visual tokens and text token embeddings projected together on 2 principal components (SEA Fig. 2)."""
    v = _subsample(visual.reshape(-1, visual.shape[-1]).float(), limit)
    t = _subsample(text.reshape(-1, text.shape[-1]).float(), limit)
    xy = pca_2d(torch.cat([v, t]))
    fig = _figure(6, 6)
    ax = fig.add_subplot()
    ax.scatter(xy[: len(v), 0], xy[: len(v), 1], s=4, alpha=0.5, color="#ff851b", label="visual tokens")
    ax.scatter(xy[len(v) :, 0], xy[len(v) :, 1], s=6, alpha=0.7, color="#e6c300", label="text tokens")
    ax.legend(loc="best")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "visual vs text token embeddings (PCA)")
    fig.tight_layout()
    return _save(fig, path)


def curve_picture(points: Sequence[tuple[int, float]], path: str | Path, *, label: str = "TACS") -> Path:
    """A metric against training step, e.g. TACS during stage 1 (SEA Fig. 5)."""
    if not points:
        raise ValueError(f"no ({label}) points to plot; pass (step, value) pairs")
    ordered = sorted((int(s), float(v)) for s, v in points)
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.plot([s for s, _ in ordered], [v for _, v in ordered], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.set_title(f"{label} during training")
    fig.tight_layout()
    return _save(fig, path)


def diagnostics_pictures(
    result: DiagnosticsResult, heldout: Heldout, vlm: Any, out_dir: str | Path, *, image: int = 0
) -> list[Path]:
    """`patch_words.png` (held-out image `image`) and `pca.png` into `out_dir`; the paths written."""
    out_dir = Path(out_dir)
    written = []
    grid = tuple(vlm.vision.spec.grid)
    if result.nearest is not None and result.words is not None:
        row = result.nearest[image].tolist()
        hits: list[bool | None] | None = None
        if result.label_index is not None:
            labels = result.label_index[image]
            hits = [
                (int(n) in set(labels[j][labels[j] >= 0].tolist())) if bool((labels[j] >= 0).any()) else None
                for j, n in enumerate(row)
            ]
        with Image.open(heldout.image_paths[image]) as picture:
            written.append(
                patch_words_picture(
                    picture, grid, [result.words[n] for n in row], out_dir / "patch_words.png", hits=hits
                )
            )
    written.append(pca_picture(result.visual, _caption_embeddings(vlm, heldout), out_dir / "pca.png"))
    return written


@torch.no_grad()
def _caption_embeddings(vlm: Any, heldout: Heldout) -> torch.Tensor:
    """LLM input embeddings of the distinct caption tokens of the held-out set `[T, D]` (float32, CPU)."""
    embedding = vlm.llm.get_input_embeddings()
    ids = heldout.caption_ids[heldout.caption_mask].unique()
    return embedding(ids.to(embedding.weight.device)).float().cpu()
