"""BASIC's pure functions: supervisory embedding, supervision degree and the DAS / SDS losses (REFERENCE §3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WeightScheme = Literal["inc", "const", "dec"]
WEIGHT_SCHEMES: tuple[str, ...] = ("inc", "const", "dec")


def layer_weights(
    k: int,
    scheme: WeightScheme = "inc",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Layer weights `[k]` of Eq. 4 for layers 1..k; they sum to 1.

    `inc`: w_i = i^2 / sum_j j^2 (the paper's default), `const`: 1/k, `dec`: (k-i+1)^2 / sum_j j^2.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"layer_weights: k must be an int >= 1 (the number of shallow layers), got {k!r}")
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"layer_weights: scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
    # float64 so the weights sum to 1 to the last bit of the requested dtype.
    i = torch.arange(1, k + 1, dtype=torch.float64)
    if scheme == "const":
        w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    else:
        squares = i**2 if scheme == "inc" else (k - i + 1) ** 2
        w = squares / (i**2).sum()
    return w.to(dtype=dtype, device=device)


def _as_layers(x: Tensor | Sequence[Tensor], name: str, per_layer_ndim: int) -> list[Tensor]:
    """Accept a stacked `[k, ...]` tensor or a sequence of k per-layer tensors; return the list."""
    if isinstance(x, Tensor):
        if x.ndim != per_layer_ndim + 1:
            raise ValueError(
                f"{name}: a stacked tensor must have {per_layer_ndim + 1} dims [k, ...], got shape "
                f"{tuple(x.shape)}; pass a list of k tensors of {per_layer_ndim} dims or stack them"
            )
        layers = list(x.unbind(0))
    elif isinstance(x, Sequence) and all(isinstance(t, Tensor) for t in x):
        layers = list(x)
    else:
        raise ValueError(f"{name}: expected a tensor or a list/tuple of tensors, got {type(x).__name__}")
    if not layers:
        raise ValueError(f"{name}: needs at least one layer, got an empty sequence")
    first = tuple(layers[0].shape)
    for idx, t in enumerate(layers):
        if t.ndim != per_layer_ndim or tuple(t.shape) != first:
            raise ValueError(
                f"{name}: every layer must have the same {per_layer_ndim}-dim shape; layer 0 is {first}, "
                f"layer {idx} is {tuple(t.shape)}"
            )
    return layers


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: bf16/fp16 activations lose too much in softmaxes and sums over thousands of terms."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def supervisory_embedding(hidden: Tensor | Sequence[Tensor], weights: Tensor) -> Tensor:
    """Eq. 4: V_hat = sum_i w_i H_i, `hidden` the visual-position states of layers 1..k.

    `hidden` is a list/tuple of k tensors `[B, m, D]` or one stacked tensor `[k, B, m, D]`;
    `weights` is `[k]` (see `layer_weights`). Returns `[B, m, D]` in the dtype of `hidden`,
    accumulated in at least float32.
    """
    layers = _as_layers(hidden, "supervisory_embedding: hidden", per_layer_ndim=3)
    if not isinstance(weights, Tensor) or weights.ndim != 1 or weights.shape[0] != len(layers):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"supervisory_embedding: weights must be a 1-D tensor of length k={len(layers)} (one per layer "
            f"of hidden), got {shape}"
        )
    acc_dtype = _compute_dtype(layers[0], weights)
    w = weights.to(device=layers[0].device, dtype=acc_dtype)
    # A running sum rather than torch.stack: k copies of [B, m, D] are never held at once.
    out = layers[0].to(acc_dtype) * w[0]
    for i in range(1, len(layers)):
        out = out + layers[i].to(acc_dtype) * w[i]
    return out.to(layers[0].dtype)


def supervision_degree(attn: Tensor | Sequence[Tensor], query_mask: Tensor | None = None) -> Tensor:
    """Eq. 5 (`auto`): per-image-position attention from text queries, normalised to sum to 1 over m.

    `attn`: attention probabilities from text queries to image keys, `[k, B, heads, n_text, m]`
    or a list of k tensors `[B, heads, n_text, m]` (one per layer 1..k).
    `query_mask`: optional bool `[B, n_text]`, True where the query is a real text token; padded
    queries then contribute nothing. Returns float32 (float64 for float64 input) `[B, m]`.

    A sample with no attention mass at all (no real text query) gets the `equal` degree 1/m
    instead of 0/0, so one odd sample neither poisons the batch with NaN nor forces a host sync.
    """
    layers = _as_layers(attn, "supervision_degree: attn", per_layer_ndim=4)
    batch, _, n_text, m = layers[0].shape
    if m < 1:
        raise ValueError(
            f"supervision_degree: attn has no image positions (m=0), shape {tuple(layers[0].shape)}"
        )
    if query_mask is not None:
        if not isinstance(query_mask, Tensor) or query_mask.dtype != torch.bool:
            raise ValueError(
                "supervision_degree: query_mask must be a bool tensor [B, n_text] (True = real text query), "
                f"got {getattr(query_mask, 'dtype', type(query_mask).__name__)}"
            )
        if tuple(query_mask.shape) != (batch, n_text):
            raise ValueError(
                f"supervision_degree: query_mask shape {tuple(query_mask.shape)} does not match attn's "
                f"[B, n_text] = {(batch, n_text)}"
            )
    dtype = _compute_dtype(layers[0])
    total = torch.zeros(batch, m, dtype=dtype, device=layers[0].device)
    # Per layer, so only one layer is ever upcast at a time.
    for layer in layers:
        per_query = layer.sum(dim=1, dtype=dtype)  # [B, n_text, m]
        if query_mask is not None:
            per_query = per_query * query_mask.to(device=per_query.device, dtype=dtype).unsqueeze(-1)
        total = total + per_query.sum(dim=1)
    # The 1/(k * heads * n_text) of the mean cancels in the normalisation, so it is not applied.
    mass = total.sum(dim=-1, keepdim=True)
    equal = torch.full_like(total, 1.0 / m)
    return torch.where(mass > 0, total / mass.clamp_min(torch.finfo(dtype).tiny), equal)


def equal_degree(
    batch: int, m: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """The `equal` supervision degree: `[batch, m]` filled with 1/m."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"equal_degree: batch must be an int >= 0, got {batch!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"equal_degree: m (number of image positions) must be an int >= 1, got {m!r}")
    return torch.full((batch, m), 1.0 / m, device=device, dtype=dtype or torch.float32)


def _check_loss_inputs(fn: str, v: Tensor, v_hat: Tensor, a: Tensor) -> None:
    if v.ndim != 3:
        raise ValueError(f"{fn}: v must be [B, m, D], got shape {tuple(v.shape)}")
    if v_hat.shape != v.shape:
        raise ValueError(f"{fn}: v_hat must have v's shape {tuple(v.shape)}, got {tuple(v_hat.shape)}")
    if tuple(a.shape) != tuple(v.shape[:2]):
        raise ValueError(f"{fn}: a must be [B, m] = {tuple(v.shape[:2])}, got {tuple(a.shape)}")
    if v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"{fn}: needs at least one sample and one visual position, got v {tuple(v.shape)}")


def das_loss(v: Tensor, v_hat: Tensor, a: Tensor) -> Tensor:
    """Eq. 6: mean over the batch of sum_i a_i || v_i/|v_i| - v_hat_i/|v_hat_i| ||^2.

    `v`, `v_hat` `[B, m, D]`, `a` `[B, m]`. Gradient reaches `v` only: `v_hat` and `a` are
    detached here. A zero vector normalises to zero (its term is then |other unit vector|^2 = 1).
    Returns a float32 scalar (float64 for float64 input).
    """
    _check_loss_inputs("das_loss", v, v_hat, a)
    dtype = _compute_dtype(v, v_hat, a)
    u = F.normalize(v.to(dtype), dim=-1)
    u_hat = F.normalize(v_hat.detach().to(dtype), dim=-1)
    # Difference, not 2 - 2 cos: no cancellation when v is already close to v_hat.
    per_position = (u - u_hat).pow(2).sum(dim=-1)  # [B, m]
    return (a.detach().to(dtype) * per_position).sum(dim=-1).mean()


@contextlib.contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """Switch autocast off so the vocabulary matmul really runs in the compute dtype."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


class _WeightedKL(torch.autograd.Function):
    """sum_r w_r KL(softmax(v_hat_r E^T) || softmax(v_r E^T)) over rows r, chunked over rows.

    Forward and backward both recompute the logits chunk by chunk and nothing of size V is saved,
    so peak memory is a few `[chunk, V]` buffers instead of several `[B*m, V]` ones. The gradient
    is analytic: d/dv_r = w_r (softmax(v_r E^T) - softmax(v_hat_r E^T)) E.
    """

    @staticmethod
    def forward(
        ctx: Any, v: Tensor, v_hat: Tensor, table: Tensor, w: Tensor, chunk: int, dtype: torch.dtype
    ) -> Tensor:
        ctx.save_for_backward(v, v_hat, table, w)
        ctx.chunk, ctx.dtype = chunk, dtype
        total = torch.zeros((), dtype=dtype, device=v.device)
        with _full_precision(v.device):
            t = table.to(dtype)
            for rows in _chunks(v.shape[0], chunk):
                log_p = (v_hat[rows].to(dtype) @ t.T).log_softmax(dim=-1)
                log_q = (v[rows].to(dtype) @ t.T).log_softmax(dim=-1)
                kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
                total = total + (w[rows].to(dtype) * kl).sum()
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        v, v_hat, table, w = ctx.saved_tensors
        dtype = ctx.dtype
        grads = []
        with _full_precision(v.device):
            t = table.to(dtype)
            for rows in _chunks(v.shape[0], ctx.chunk):
                q = (v[rows].to(dtype) @ t.T).softmax(dim=-1)
                q.sub_((v_hat[rows].to(dtype) @ t.T).softmax(dim=-1))
                q.mul_((w[rows].to(dtype) * grad_out.to(dtype)).unsqueeze(-1))
                grads.append(q @ t)
        return torch.cat(grads).to(v.dtype), None, None, None, None, None


class _WeightedKLGradInForward(torch.autograd.Function):
    """`_WeightedKL` with the gradient computed in the forward, chunk by chunk, and only it `[rows, D]`
    kept for backward: E need not outlive the forward (under ZeRO-3 it is gathered for the call only,
    no copy), and each chunk's two vocabulary projections serve both the loss and the gradient (three
    `[chunk, V]` matmuls per chunk instead of five)."""

    @staticmethod
    def forward(
        ctx: Any, v: Tensor, v_hat: Tensor, table: Tensor, w: Tensor, chunk: int, dtype: torch.dtype
    ) -> Tensor:
        total = torch.zeros((), dtype=dtype, device=v.device)
        grads = []
        with _full_precision(v.device):
            t = table.to(dtype)
            for rows in _chunks(v.shape[0], chunk):
                log_p = (v_hat[rows].to(dtype) @ t.T).log_softmax(dim=-1)
                log_q = (v[rows].to(dtype) @ t.T).log_softmax(dim=-1)
                p = log_p.exp()
                kl = (p * (log_p - log_q)).sum(dim=-1)
                total = total + (w[rows].to(dtype) * kl).sum()
                if ctx.needs_input_grad[0]:
                    q = log_q.exp_().sub_(p).mul_(w[rows].to(dtype).unsqueeze(-1))
                    grads.append(q @ t)
        ctx.save_for_backward(torch.cat(grads) if grads else None)
        ctx.v_dtype = v.dtype
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        return (grad * grad_out.to(grad.dtype)).to(ctx.v_dtype), None, None, None, None, None


def sds_loss(
    v: Tensor,
    v_hat: Tensor,
    embedding: Tensor | nn.Embedding,
    a: Tensor,
    *,
    chunk_size: int | None = None,
    grad_in_forward: bool = False,
) -> Tensor:
    """Eq. 7: mean over the batch of sum_i a_i KL(p_i || q_i), P = softmax(V_hat E^T), Q = softmax(V E^T).

    `v`, `v_hat` `[B, m, D]`, `embedding` the LLM input embedding table `[V, D]` (tensor or
    nn.Embedding), `a` `[B, m]`. Gradient reaches `v` only: `v_hat`, `a` and `E` are constants.
    Computed in at least float32 with autocast off; returns a float32 (float64) scalar.

    Memory: `chunk_size` bounds how many of the B*m positions are projected onto the vocabulary at
    once (default: all). Peak extra memory is about 4 * rows * V * 4 bytes plus a float32 copy of
    E when E is half precision (V * D * 4 bytes: 0.5 GB for 32k x 4096, 2.1 GB for 128k x 4096).
    All B*m = 16*576 rows at V = 128k is ~19 GB; chunk_size=1024 brings it to ~2 GB.
    Supports a single backward (no double backward). `grad_in_forward`: the gradient is computed in
    the call and E is not kept for backward (so E may be a gathered ZeRO-3 weight released right
    after; `[B*m, D]` of gradient is kept instead).
    """
    _check_loss_inputs("sds_loss", v, v_hat, a)
    table = embedding.weight if isinstance(embedding, nn.Embedding) else embedding
    if not isinstance(table, Tensor) or table.ndim != 2 or table.shape[1] != v.shape[-1]:
        shape = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(
            f"sds_loss: embedding must be an nn.Embedding or a [V, D] tensor with D = {v.shape[-1]} "
            f"(v's last dim), got {shape}"
        )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"sds_loss: chunk_size must be None or an int >= 1 (positions per chunk), got {chunk_size!r}"
        )
    batch, m, dim = v.shape
    dtype = _compute_dtype(v, v_hat, table, a)
    rows = batch * m
    # Per-row weight a_i / B turns "sum over positions, mean over batch" into one flat sum.
    w = a.detach().reshape(rows).to(dtype) / batch
    kl = _WeightedKLGradInForward if grad_in_forward else _WeightedKL
    return kl.apply(
        v.reshape(rows, dim),
        v_hat.detach().reshape(rows, dim),
        table.detach(),
        w,
        chunk_size or rows,
        dtype,
    )
