"""The diagnostics' pictures: the words nearest each patch, a PCA of both modalities, the TACS curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from core.evaluation.diagnostics import DiagnosticsResult, caption_embeddings
from core.evaluation.heldout import Heldout

if TYPE_CHECKING:
    from core.models.vlm import VLM


# matplotlib's Agg canvas directly: no pyplot, no global backend switch.
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
    result: DiagnosticsResult, heldout: Heldout, vlm: VLM, out_dir: str | Path, *, image: int = 0
) -> list[Path]:
    """`patch_words.png` (held-out image `image`) and `pca.png` into `out_dir`; the paths written."""
    out_dir = Path(out_dir)
    written = []
    rows_n, cols_n = vlm.vision.spec.grid
    grid = (rows_n, cols_n)
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
    written.append(pca_picture(result.visual, caption_embeddings(vlm, heldout), out_dir / "pca.png"))
    return written
