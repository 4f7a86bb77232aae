"""BASIC in a training step: distil the LLM's shallow-layer visual states back into the adapter output (Eq. 8)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from core.basic import WEIGHT_SCHEMES, das_loss, layer_weights, sds_loss
from core.config.methods import BASIC
from core.methods.attention_capture import DEFAULT_CHUNK_ELEMENTS, ShallowCaptureResult, ShallowLayerCapture
from core.methods.objective import Objective

if TYPE_CHECKING:
    from core.config import BasicConfig
    from core.models.vlm import VLM

DAS, SDS = BASIC.metrics

DEGREES = ("auto", "equal")
# Cap on the float32 elements of one [rows, vocab] SDS logit chunk (32M = 128 MB; ~4 such buffers live).
DEFAULT_SDS_CHUNK_ELEMENTS = 1 << 25


class BasicObjective(Objective):
    """L = L_lm + das_weight * L_das + sds_weight * L_sds (REFERENCE.md section 3).

    `cfg` has `layers` (k; None = half the LLM's layers), `weighting` (inc/const/dec), `degree`
    (auto/equal), `das_weight` (lambda1) and `sds_weight` (lambda2). `vlm` is the core.models.VLM the
    objective trains (only its LLM's layer count and embedding table are read; it is not registered as
    a submodule, so the objective's parameters and state_dict stay empty).

    V is the adapter output `out.visual_tokens` (with gradient); V_hat and the degree come from the
    capture of the forward run inside `forward_context`; V_hat, a and E are constants, so BASIC's
    gradient reaches the adapter (and whatever produced V) only.
    """

    def __init__(
        self,
        cfg: BasicConfig,
        vlm: VLM,
        *,
        attention_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        sds_chunk_elements: int = DEFAULT_SDS_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self._vlm = (vlm,)  # a tuple: nn.Module must not adopt the VLM's parameters
        num_layers = int(vlm.llm.config.num_hidden_layers)
        k = num_layers // 2 if cfg.layers is None else cfg.layers
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_layers:
            raise ValueError(
                f"basic.layers: must be in [1, {num_layers}] (the LLM has {num_layers} layers) or null for "
                f"half of them, got {cfg.layers!r}"
            )
        if cfg.weighting not in WEIGHT_SCHEMES:
            raise ValueError(f"basic.weighting: must be one of {WEIGHT_SCHEMES}, got {cfg.weighting!r}")
        if cfg.degree not in DEGREES:
            raise ValueError(f"basic.degree: must be one of {DEGREES}, got {cfg.degree!r}")
        for name in ("das_weight", "sds_weight"):
            if not getattr(cfg, name) >= 0:
                raise ValueError(f"basic.{name}: must be >= 0, got {getattr(cfg, name)!r}")
        self.layers = k
        self.weights = layer_weights(k, cfg.weighting)
        self.attention_chunk_elements = attention_chunk_elements
        self.sds_chunk_elements = sds_chunk_elements
        self._capture: ShallowCaptureResult | None = None

    @property
    def active(self) -> bool:
        """Whether any term is computed at all (both weights 0 = the baseline)."""
        return self.cfg.das_weight > 0 or self.cfg.sds_weight > 0

    @contextlib.contextmanager
    def embedding_table(self) -> Iterator[Tensor]:
        """E `[V, D]`, the LLM's input embedding table, detached, for the block inside. Replaced where it
        is sharded (ZeRO-3: gathered for the block, a collective; see core/train/setup.py). L_sds keeps
        only its gradient, not E, so nothing holds the gathered table after the block."""
        yield self._vlm[0].input_embeddings().weight.detach()

    @contextlib.contextmanager
    def forward_context(self, vlm: VLM) -> Iterator[None]:
        """Capture V_hat (and, for degree `auto`, the attention mass) during the VLM forward run inside."""
        self._capture = None
        if not self.active:
            yield
            return
        capture = ShallowLayerCapture(
            vlm,
            self.layers,
            self.weights,
            attention=self.cfg.degree == "auto",
            chunk_elements=self.attention_chunk_elements,
        )
        with capture:
            yield
        self._capture = capture.result

    def extra_loss(self, batch: dict[str, Any], out: Any) -> tuple[Tensor | None, dict[str, float]]:
        if not self.active:
            return None, {}
        capture, self._capture = self._capture, None  # one capture serves exactly one output
        if capture is None:
            raise RuntimeError(
                "BasicObjective.extra_loss: no capture for this output; run the forward inside "
                "`with objective.forward_context(vlm): out = model(batch)`"
            )
        if capture.positions is not out.visual_positions and not torch.equal(
            capture.positions, out.visual_positions
        ):
            raise RuntimeError("BasicObjective.extra_loss: the capture belongs to another forward than `out`")
        metrics = {name: 0.0 for name, w in self._terms() if w > 0}
        if out.visual_tokens is None:
            self._gather_in_step()
            return None, metrics
        # Samples without an image (or whose image was truncated away) contribute nothing, not a zero:
        # the per-sample sums are averaged over the samples that have one.
        rows = capture.samples.nonzero().flatten()
        if rows.numel() == 0:
            self._gather_in_step()
            return out.visual_tokens.sum() * 0.0, metrics
        v = self._visual_tokens(batch, out)[rows]
        v_hat = capture.v_hat[rows]
        a = capture.degree(self.cfg.degree)[rows]
        total: Tensor | None = None
        if self.cfg.das_weight > 0:
            das = das_loss(v, v_hat, a)
            metrics[DAS] = float(das.detach())
            total = self.cfg.das_weight * das
        if self.cfg.sds_weight > 0:
            with self.embedding_table() as table:
                chunk = max(1, self.sds_chunk_elements // table.shape[0])
                sds = sds_loss(v, v_hat, table, a, chunk_size=chunk, grad_in_forward=True)
            metrics[SDS] = float(sds.detach())
            term = self.cfg.sds_weight * sds
            total = term if total is None else total + term
        return total, metrics

    def _gather_in_step(self) -> None:
        """A micro-step without L_sds still enters the table's block when L_sds is on: under ZeRO-3 the
        gather is a collective, and a rank whose micro-batch has no image must not leave the others
        waiting in theirs."""
        if self.cfg.sds_weight > 0:
            with self.embedding_table():
                pass

    def _visual_tokens(self, batch: dict[str, Any], out: Any) -> Tensor:
        """V for BASIC's losses: the adapter output. When the vision tower trains (stage 2, train_vision),
        the adapter runs once more on the tower's features without gradient, so that BASIC's gradient still
        reaches the adapter only (REFERENCE 3.4)."""
        vlm = self._vlm[0]
        if not any(p.requires_grad for p in vlm.vision.parameters()):
            return out.visual_tokens
        pixels = batch["pixel_values"].to(out.visual_tokens.device)
        return vlm.encode_images(pixels, detach_features=True)

    def _terms(self) -> tuple[tuple[str, float], ...]:
        return ((DAS, self.cfg.das_weight), (SDS, self.cfg.sds_weight))
