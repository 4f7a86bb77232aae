"""Tests for core.basic against naive float64 loops, hand-worked numbers and known limits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.basic import (
    WEIGHT_SCHEMES,
    das_loss,
    equal_degree,
    layer_weights,
    sds_loss,
    supervision_degree,
    supervisory_embedding,
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------- naive references (float64 loops)


def naive_das(v: torch.Tensor, v_hat: torch.Tensor, a: torch.Tensor) -> float:
    batch, m, dim = v.shape
    total = 0.0
    for b in range(batch):
        for i in range(m):
            nv = math.sqrt(sum(float(v[b, i, d]) ** 2 for d in range(dim)))
            nh = math.sqrt(sum(float(v_hat[b, i, d]) ** 2 for d in range(dim)))
            sq = sum((float(v[b, i, d]) / nv - float(v_hat[b, i, d]) / nh) ** 2 for d in range(dim))
            total += float(a[b, i]) * sq
    return total / batch


def naive_softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    s = sum(exps)
    return [e / s for e in exps]


def naive_sds(v: torch.Tensor, v_hat: torch.Tensor, table: torch.Tensor, a: torch.Tensor) -> float:
    batch, m, dim = v.shape
    vocab = table.shape[0]
    total = 0.0
    for b in range(batch):
        for i in range(m):
            zp = [sum(float(v_hat[b, i, d]) * float(table[t, d]) for d in range(dim)) for t in range(vocab)]
            zq = [sum(float(v[b, i, d]) * float(table[t, d]) for d in range(dim)) for t in range(vocab)]
            p, q = naive_softmax(zp), naive_softmax(zq)
            kl = sum(p[t] * (math.log(p[t]) - math.log(q[t])) for t in range(vocab))
            total += float(a[b, i]) * kl
    return total / batch


def naive_degree(attn: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5 literally: mean over layers, heads and (real) text queries, then normalise."""
    k, batch, heads, n_text, m = attn.shape
    out = torch.zeros(batch, m, dtype=torch.float64)
    for b in range(batch):
        queries = [j for j in range(n_text) if query_mask is None or bool(query_mask[b, j])]
        for i in range(m):
            s = 0.0
            for layer in range(k):
                for h in range(heads):
                    for j in queries:
                        s += float(attn[layer, b, h, j, i])
            out[b, i] = s / (k * heads * len(queries))
        out[b] /= out[b].sum()
    return out


# ---------------------------------------------------------------- layer_weights


def test_layer_weights_hand_worked() -> None:
    torch.testing.assert_close(layer_weights(3, "inc"), torch.tensor([1.0, 4.0, 9.0]) / 14)
    torch.testing.assert_close(layer_weights(3, "dec"), torch.tensor([9.0, 4.0, 1.0]) / 14)
    torch.testing.assert_close(layer_weights(3, "const"), torch.full((3,), 1.0 / 3))
    torch.testing.assert_close(
        layer_weights(2, "inc", dtype=torch.float64), torch.tensor([0.2, 0.8], dtype=torch.float64)
    )
    for scheme in WEIGHT_SCHEMES:
        assert layer_weights(1, scheme).tolist() == [1.0]


def test_layer_weights_default_is_inc_and_sums_to_one() -> None:
    torch.testing.assert_close(layer_weights(16), layer_weights(16, "inc"))
    for scheme in WEIGHT_SCHEMES:
        w = layer_weights(16, scheme, dtype=torch.float64)
        assert w.shape == (16,)
        assert abs(float(w.sum()) - 1.0) < 1e-12
    # 16 of 32 layers: the last weight is 256 / sum_{1..16} i^2 = 256 / 1496.
    assert float(layer_weights(16, "inc", dtype=torch.float64)[-1]) == pytest.approx(256 / 1496)
    torch.testing.assert_close(layer_weights(16, "dec"), layer_weights(16, "inc").flip(0))


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3"])
def test_layer_weights_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        layer_weights(k, "inc")  # type: ignore[arg-type]


def test_layer_weights_bad_scheme_names_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"'inc', 'const', 'dec'.*'linear'"):
        layer_weights(3, "linear")  # type: ignore[arg-type]


# ---------------------------------------------------------------- supervisory_embedding


def test_supervisory_embedding_matches_loop_list_and_stacked(gen: torch.Generator) -> None:
    k, batch, m, dim = 4, 2, 5, 3
    hidden = torch.randn(k, batch, m, dim, generator=gen, dtype=torch.float64)
    w = layer_weights(k, "inc", dtype=torch.float64)
    ref = torch.zeros(batch, m, dim, dtype=torch.float64)
    for layer in range(k):
        for b in range(batch):
            for i in range(m):
                for d in range(dim):
                    ref[b, i, d] += float(w[layer]) * float(hidden[layer, b, i, d])
    torch.testing.assert_close(supervisory_embedding(hidden, w), ref)
    torch.testing.assert_close(supervisory_embedding(list(hidden.unbind(0)), w), ref)
    torch.testing.assert_close(supervisory_embedding(tuple(hidden.unbind(0)), w), ref)


def test_supervisory_embedding_hand_worked_and_const_limit() -> None:
    ones = torch.ones(1, 2, 2)
    hidden = [ones * 1.0, ones * 2.0, ones * 3.0]
    # inc: (1*1 + 4*2 + 9*3) / 14 = 36/14
    torch.testing.assert_close(supervisory_embedding(hidden, layer_weights(3, "inc")), ones * (36 / 14))
    torch.testing.assert_close(supervisory_embedding(hidden, layer_weights(3, "const")), ones * 2.0)


def test_supervisory_embedding_keeps_half_dtype_and_accumulates_in_float32(gen: torch.Generator) -> None:
    hidden = torch.randn(16, 2, 3, 8, generator=gen).to(torch.bfloat16)
    w = layer_weights(16)
    out = supervisory_embedding(hidden, w)
    assert out.dtype == torch.bfloat16
    ref = (hidden.double() * w.double()[:, None, None, None]).sum(0)
    # One final bf16 rounding only: within bf16 resolution of the exact sum.
    torch.testing.assert_close(out.double(), ref, rtol=8e-3, atol=1e-3)


def test_supervisory_embedding_errors() -> None:
    hidden = [torch.zeros(2, 3, 4)] * 3
    with pytest.raises(ValueError, match="length k=3"):
        supervisory_embedding(hidden, layer_weights(2))
    with pytest.raises(ValueError, match="length k=3"):
        supervisory_embedding(hidden, torch.ones(3, 1))
    with pytest.raises(ValueError, match="same 3-dim shape"):
        supervisory_embedding([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)], layer_weights(2))
    with pytest.raises(ValueError, match=r"stacked tensor must have 4 dims"):
        supervisory_embedding(torch.zeros(2, 3, 4), layer_weights(2))
    with pytest.raises(ValueError, match="at least one layer"):
        supervisory_embedding([], torch.ones(0))


# ---------------------------------------------------------------- supervision_degree / equal_degree


def test_supervision_degree_matches_loop(gen: torch.Generator) -> None:
    attn = torch.rand(3, 2, 4, 5, 6, generator=gen, dtype=torch.float64)
    out = supervision_degree(attn)
    assert out.shape == (2, 6)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive_degree(attn))
    torch.testing.assert_close(out.sum(-1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(supervision_degree(list(attn.unbind(0))), out)


def test_supervision_degree_from_real_causal_softmax(gen: torch.Generator) -> None:
    """Attention built like a decoder's: causal softmax over [prefix | image | text]."""
    k, batch, heads, head_dim = 3, 2, 4, 8
    prefix, m, n_text = 3, 6, 5
    seq = prefix + m + n_text
    causal = torch.ones(seq, seq).tril().bool()
    probs = []
    for _ in range(k):
        q = torch.randn(batch, heads, seq, head_dim, generator=gen, dtype=torch.float64)
        kk = torch.randn(batch, heads, seq, head_dim, generator=gen, dtype=torch.float64)
        scores = (q @ kk.transpose(-1, -2)) / math.sqrt(head_dim)
        probs.append(scores.masked_fill(~causal, float("-inf")).softmax(-1))
    text = slice(prefix + m, seq)
    image = slice(prefix, prefix + m)
    sliced = [p[:, :, text, image] for p in probs]
    out = supervision_degree(sliced)

    ref = torch.zeros(batch, m, dtype=torch.float64)
    for b in range(batch):
        for i in range(m):
            s = 0.0
            for layer in range(k):
                for h in range(heads):
                    for j in range(prefix + m, seq):
                        s += float(probs[layer][b, h, j, prefix + i])
            ref[b, i] = s / (k * heads * n_text)
        ref[b] /= ref[b].sum()
    torch.testing.assert_close(out, ref)
    # Real attention is not uniform, so `auto` must differ from `equal` here.
    assert not torch.allclose(out, equal_degree(batch, m, dtype=torch.float64))


def test_supervision_degree_query_mask_ignores_padding(gen: torch.Generator) -> None:
    attn = torch.rand(2, 3, 2, 5, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor(
        [[True, True, True, True, True], [True, True, False, False, False], [True, False, True, False, True]]
    )
    # Garbage on padded queries must not matter.
    poisoned = attn.clone()
    poisoned[:, 1, :, 2:, :] = 1e6 * torch.arange(1, 5, dtype=torch.float64)
    poisoned[:, 2, :, 1, :] = 1e6
    poisoned[:, 2, :, 3, 0] = 1e6
    out = supervision_degree(poisoned, query_mask=mask)
    torch.testing.assert_close(out, naive_degree(attn, mask))
    # Sample 1 with its real queries only equals that sample computed without padding.
    torch.testing.assert_close(out[1], supervision_degree(attn[:, 1:2, :, :2, :])[0])
    # An all-True mask changes nothing.
    torch.testing.assert_close(
        supervision_degree(attn, torch.ones(3, 5, dtype=torch.bool)), supervision_degree(attn)
    )


def test_supervision_degree_sample_without_mass_falls_back_to_equal(gen: torch.Generator) -> None:
    attn = torch.rand(2, 2, 3, 4, 5, generator=gen)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    out = supervision_degree(attn, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], torch.full((5,), 0.2))
    torch.testing.assert_close(out[0], naive_degree(attn[:, :1].double(), mask[:1]).float()[0])


def test_supervision_degree_bf16_input_returns_float32(gen: torch.Generator) -> None:
    attn = torch.rand(2, 2, 3, 4, 5, generator=gen)
    out = supervision_degree(attn.to(torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_degree(attn.to(torch.bfloat16).double()).float())


def test_supervision_degree_errors() -> None:
    attn = torch.rand(2, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="stacked tensor must have 5 dims"):
        supervision_degree(attn[0])
    with pytest.raises(ValueError, match="must be a bool tensor"):
        supervision_degree(attn, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"query_mask shape \(2, 3\).*\(2, 4\)"):
        supervision_degree(attn, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same 4-dim shape"):
        supervision_degree([attn[0], attn[1, :, :, :3]])


def test_equal_degree() -> None:
    out = equal_degree(3, 4)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert (out == 0.25).all()
    assert equal_degree(1, 3, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="m .* must be an int >= 1"):
        equal_degree(2, 0)
    with pytest.raises(ValueError, match="batch must be an int >= 0"):
        equal_degree(-1, 3)


# ---------------------------------------------------------------- das_loss


def _inputs(gen: torch.Generator, batch: int = 2, m: int = 3, dim: int = 4, vocab: int = 7):
    v = torch.randn(batch, m, dim, generator=gen, dtype=torch.float64)
    v_hat = torch.randn(batch, m, dim, generator=gen, dtype=torch.float64)
    a = torch.rand(batch, m, generator=gen, dtype=torch.float64)
    a = a / a.sum(-1, keepdim=True)
    table = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
    return v, v_hat, a, table


def test_das_matches_loop(gen: torch.Generator) -> None:
    v, v_hat, a, _ = _inputs(gen)
    out = das_loss(v, v_hat, a)
    assert out.ndim == 0 and out.dtype == torch.float64
    assert float(out) == pytest.approx(naive_das(v, v_hat, a), rel=1e-12)


def test_das_hand_worked_and_limits(gen: torch.Generator) -> None:
    one = torch.ones(1, 1)
    # Orthogonal unit vectors: |e1 - e2|^2 = 2; opposite: 4; scale does not matter.
    assert float(das_loss(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 5.0]]]), one)) == pytest.approx(
        2.0
    )
    assert float(das_loss(torch.tensor([[[3.0, 0.0]]]), torch.tensor([[[-1.0, 0.0]]]), one)) == pytest.approx(
        4.0
    )
    v, v_hat, a, _ = _inputs(gen)
    assert float(das_loss(v, v, a)) == pytest.approx(0.0, abs=1e-12)
    assert float(das_loss(v, 7.0 * v, a)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(das_loss(3.0 * v, v_hat, a), das_loss(v, v_hat, a))
    # Uniform a = 1/m: the plain mean over all positions of the per-position squared distance.
    per_pos = (v / v.norm(dim=-1, keepdim=True) - v_hat / v_hat.norm(dim=-1, keepdim=True)).pow(2).sum(-1)
    torch.testing.assert_close(das_loss(v, v_hat, equal_degree(2, 3, dtype=torch.float64)), per_pos.mean())


def test_das_bf16_inputs_compute_in_float32(gen: torch.Generator) -> None:
    v, v_hat, a, _ = _inputs(gen)
    vb, hb = v.to(torch.bfloat16), v_hat.to(torch.bfloat16)
    out = das_loss(vb, hb, a.float())
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(naive_das(vb.double(), hb.double(), a.float().double()), rel=1e-5)


def test_das_errors() -> None:
    v = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"v must be \[B, m, D\]"):
        das_loss(v[0], v[0], torch.zeros(3))
    with pytest.raises(ValueError, match="v_hat must have v's shape"):
        das_loss(v, v[:, :2], torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"a must be \[B, m\] = \(2, 3\), got \(2, 3, 1\)"):
        das_loss(v, v, torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="at least one sample"):
        das_loss(v[:0], v[:0], torch.zeros(0, 3))


# ---------------------------------------------------------------- sds_loss


def test_sds_matches_loop(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen)
    out = sds_loss(v, v_hat, table, a)
    assert out.ndim == 0 and out.dtype == torch.float64
    assert float(out) == pytest.approx(naive_sds(v, v_hat, table, a), rel=1e-10)


def test_sds_hand_worked() -> None:
    # E = [[1], [0]], v_hat = log 3 -> p = (3/4, 1/4); v = 0 -> q = (1/2, 1/2).
    table = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    v_hat = torch.tensor([[[math.log(3.0)]]], dtype=torch.float64)
    v = torch.zeros(1, 1, 1, dtype=torch.float64)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(sds_loss(v, v_hat, table, torch.ones(1, 1))) == pytest.approx(expected, rel=1e-12)
    # Two samples with a = 1 and 0.5: mean over the batch of the per-sample sums.
    v2, h2 = v.repeat(2, 1, 1), v_hat.repeat(2, 1, 1)
    a2 = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    assert float(sds_loss(v2, h2, table, a2)) == pytest.approx(0.75 * expected, rel=1e-12)


def test_sds_limits(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen)
    assert float(sds_loss(v, v, table, a)) == pytest.approx(0.0, abs=1e-12)
    assert float(sds_loss(v, v_hat, table, a)) > 0.0
    # Uniform a = 1/m: the plain mean over positions of F.kl_div, computed independently.
    log_p = (v_hat @ table.T).log_softmax(-1)
    log_q = (v @ table.T).log_softmax(-1)
    kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(sds_loss(v, v_hat, table, equal_degree(2, 3, dtype=torch.float64)), kl.mean())


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 100])
def test_sds_chunked_equals_unchunked_value_and_grad(gen: torch.Generator, chunk: int) -> None:
    v, v_hat, a, table = _inputs(gen)
    v1 = v.clone().requires_grad_(True)
    v2 = v.clone().requires_grad_(True)
    full = sds_loss(v1, v_hat, table, a)
    part = sds_loss(v2, v_hat, table, a, chunk_size=chunk)
    full.backward()
    part.backward()
    torch.testing.assert_close(part, full)
    torch.testing.assert_close(v2.grad, v1.grad)


def test_sds_gradient_matches_autograd_of_plain_formula(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen)
    v1 = v.clone().requires_grad_(True)
    sds_loss(v1, v_hat, table, a, chunk_size=4).backward()
    v2 = v.clone().requires_grad_(True)
    log_p = (v_hat @ table.T).log_softmax(-1)
    log_q = (v2 @ table.T).log_softmax(-1)
    ((a * (log_p.exp() * (log_p - log_q)).sum(-1)).sum(-1).mean()).backward()
    torch.testing.assert_close(v1.grad, v2.grad)
    # And numerically, through the custom backward, with a non-unit upstream gradient.
    assert torch.autograd.gradcheck(
        lambda x: 3.0 * sds_loss(x, v_hat, table, a, chunk_size=4), (v.clone().requires_grad_(True),)
    )


def test_sds_accepts_nn_embedding(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen)
    emb = nn.Embedding(table.shape[0], table.shape[1]).double()
    with torch.no_grad():
        emb.weight.copy_(table)
    torch.testing.assert_close(sds_loss(v, v_hat, emb, a), sds_loss(v, v_hat, table, a))


def test_sds_half_precision_and_autocast_still_float32(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen, batch=2, m=4, dim=32, vocab=50)
    vb, hb, tb = (x.to(torch.bfloat16) for x in (v, v_hat, table))
    ref = naive_sds(vb.double(), hb.double(), tb.double(), a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sds_loss(vb, hb, tb, a.float())
    assert out.dtype == torch.float32
    # A bf16 vocabulary matmul would be off by ~1e-2 relative; float32 keeps it at ~1e-6.
    assert float(out) == pytest.approx(ref, rel=1e-4)
    vg = vb.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sds_loss(vg, hb, tb, a.float(), chunk_size=3).backward()
    assert vg.grad is not None and vg.grad.dtype == torch.bfloat16


def test_sds_errors(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen)
    with pytest.raises(ValueError, match=r"\[V, D\] tensor with D = 4.*\(7, 3\)"):
        sds_loss(v, v_hat, table[:, :3], a)
    with pytest.raises(ValueError, match=r"\[V, D\] tensor with D = 4"):
        sds_loss(v, v_hat, table[0], a)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1"):
            sds_loss(v, v_hat, table, a, chunk_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"a must be \[B, m\]"):
        sds_loss(v, v_hat, table, a[:, :2])


# ---------------------------------------------------------------- gradients reach v only


def test_gradients_reach_v_only(gen: torch.Generator) -> None:
    v, v_hat, a, table = _inputs(gen)
    for loss_name in ("das", "sds_table", "sds_module"):
        vv = v.clone().requires_grad_(True)
        hh = v_hat.clone().requires_grad_(True)
        aa = a.clone().requires_grad_(True)
        tt = table.clone().requires_grad_(True)
        emb = nn.Embedding(*table.shape).double()
        if loss_name == "das":
            loss = das_loss(vv, hh, aa)
        elif loss_name == "sds_table":
            loss = sds_loss(vv, hh, tt, aa)
        else:
            loss = sds_loss(vv, hh, emb, aa)
        assert loss.requires_grad
        loss.backward()
        assert vv.grad is not None and vv.grad.abs().sum() > 0, loss_name
        assert hh.grad is None, loss_name
        assert aa.grad is None, loss_name
        assert tt.grad is None, loss_name
        assert emb.weight.grad is None, loss_name


@pytest.mark.parametrize("which", ["das", "sds"])
def test_no_gradient_path_through_v_hat_or_a_built_from_v(gen: torch.Generator, which: str) -> None:
    """v_hat and a computed *from v* (as in the model) must still be treated as constants."""
    v, _, _, table = _inputs(gen)
    lin = torch.randn(4, 4, generator=gen, dtype=torch.float64)

    def run(connected: bool) -> torch.Tensor:
        vv = v.clone().requires_grad_(True)
        src = vv if connected else vv.detach()
        v_hat = torch.tanh(src @ lin)
        a = src.pow(2).sum(-1).softmax(-1)
        loss = das_loss(vv, v_hat, a) if which == "das" else sds_loss(vv, v_hat, table, a, chunk_size=2)
        loss.backward()
        assert vv.grad is not None
        return vv.grad

    torch.testing.assert_close(run(connected=True), run(connected=False))
