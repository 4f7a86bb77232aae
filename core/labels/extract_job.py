"""One extraction's job (what labels come from and how) and its inputs: images as tensors, words as features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from core.data.images import preprocess_for
from core.labels.address import resolve_label_encoder
from core.labels.scoring import FAST_DTYPES, Scorer, make_scorer
from core.labels.words import check_words
from core.models.vision import get_encoder_spec

TEXT_BATCH = 1024  # words per text-tower forward pass when encoding the word list


@dataclass(frozen=True)
class ExtractJob:
    """One extraction: what labels are computed from and how (shipped to the Ray workers as is).

    ``encoder_id`` labels the images of the LLaVA JSON ``json_path`` (files under ``image_root``) with
    the top ``top_n`` of ``words`` per patch (``negate``: SEA's -cos sign); ``batch_size`` images per
    forward pass, ``chunk_size`` words scored at once, ``num_workers`` image-decoding processes;
    ``on_missing_image="skip"`` leaves a missing image's row empty (listed in ``missing_ids``).
    """

    encoder_id: str
    words: tuple[str, ...]
    json_path: Path
    image_root: Path
    top_n: int = 10
    negate: bool = True
    batch_size: int = 32
    encoder_path: str | None = None
    chunk_size: int | None = None
    # Scoring memory per batch: an exact chunk of words is cut to fit (a 4M-word list against 32 x 576
    # patches in one chunk would be 300 GB of float32 scores alone).
    budget_bytes: int = 1 << 30
    score_dtype: str = "float32"
    num_workers: int = 0
    on_missing_image: str = "fail"
    # "exact": every word scored in float64 (`extract_labels`); a fast dtype picks candidates with that
    # matmul and rescores them exactly (`select_labels`, equal results); "auto": bfloat16 on CUDA, else exact.
    scoring: str = "auto"

    def __post_init__(self) -> None:
        if not get_encoder_spec(self.encoder_id).has_text_tower:
            resolve_label_encoder(self.encoder_id)  # raises, pointing at sea.labels_from
        object.__setattr__(self, "words", tuple(check_words(self.words)))
        object.__setattr__(self, "json_path", Path(self.json_path))
        object.__setattr__(self, "image_root", Path(self.image_root))
        if self.encoder_path is not None:
            object.__setattr__(self, "encoder_path", str(self.encoder_path))
        bs = self.batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"batch_size={bs!r}: must be an int >= 1")
        if self.on_missing_image not in ("fail", "skip"):
            raise ValueError(f"on_missing_image={self.on_missing_image!r}: must be 'fail' or 'skip'")
        if self.scoring not in ("auto", "exact", *FAST_DTYPES):
            allowed = ", ".join(("auto", "exact", *FAST_DTYPES))
            raise ValueError(f"scoring={self.scoring!r}: unknown; allowed: {allowed}")

    def scorer(self, device: torch.device) -> Scorer:
        """The function scoring a batch of patch features against the word features on `device`."""
        return make_scorer(
            self.scoring,
            device,
            top_n=self.top_n,
            negate=self.negate,
            chunk_size=self.chunk_size,
            budget_bytes=self.budget_bytes,
        )

    @property
    def skip_missing(self) -> bool:
        return self.on_missing_image == "skip"


class ImageRows(Dataset):
    """Preprocessed images of rows ``start:stop``; a missing file may give zeros and ``present=False``."""

    def __init__(
        self,
        ids: Sequence[str],
        images: Sequence[str],
        root: Path,
        start: int,
        stop: int,
        spec: Any,
        skip_missing: bool,
    ) -> None:
        self.ids, self.images, self.root, self.start, self.stop = ids, images, root, start, stop
        self.size, self.spec = spec.image_size, spec
        self.skip_missing = skip_missing

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> tuple[torch.Tensor, bool]:
        row = self.start + k
        path = self.root / self.images[row]
        if not path.is_file():
            if self.skip_missing:
                return torch.zeros(3, self.size, self.size), False
            raise FileNotFoundError(
                f"sample {self.ids[row]!r}: image not found at {path} (on_missing_image='skip' leaves its row empty)"
            )
        try:
            with Image.open(path) as image:
                image.load()
                return preprocess_for(image, self.spec, "square"), True
        except (OSError, UnidentifiedImageError) as err:
            raise OSError(f"sample {self.ids[row]!r}: cannot read image {path} ({err})") from err


def collate_images(items: list[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([p for p, _ in items]), torch.tensor([ok for _, ok in items], dtype=torch.bool)


def encode_words(tower: Any, words: Sequence[str]) -> torch.Tensor:
    """`[q, e]` float32 text features of `words`, written into one preallocated table.

    Why not a list of batches and `torch.cat`: each kept batch (128 KiB) pinned the heap above the freed
    activations of its forward pass, and the process grew by about 5.7 KB per word (23 GB at 4M words
    before the machine ran out; measured with `bench/label_words_bench.py`).
    """
    out: torch.Tensor | None = None
    for i in range(0, len(words), TEXT_BATCH):
        feats = tower.text_features(list(words[i : i + TEXT_BATCH]), normalize=True)
        if out is None:
            out = torch.empty((len(words), feats.shape[1]), dtype=torch.float32, device=feats.device)
        out[i : i + feats.shape[0]] = feats
        del feats
    assert out is not None, "no words"
    return out


# Unit roundoff of the inputs of a fast matmul ("tf32": float32 inputs on CUDA with TF32 matmuls allowed).
