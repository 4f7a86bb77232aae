"""Capture BASIC's supervisory embedding and supervision degree from the LLM's shallow layers during one forward."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from core.models.vlm import VLM, SplicedInputs

# Attribute set on the attention modules of layers 1..k while a capture is active: (capture, layer index).
CAPTURE_ATTR = "_seagrid_capture"
# The capturing attention implementation for an original one is registered as PREFIX + original, so
# transformers' name checks ("flash" in the name, mask function lookup) see the same family.
CAPTURE_PREFIX = "seagrid_capture_"
# Default cap on the scores of one [B, heads, rows, L] chunk: 32M, i.e. 128 MB per float32 buffer and
# about 320 MB at the peak of a chunk (q k^T in bf16, the float32 scores, the probabilities).
DEFAULT_CHUNK_ELEMENTS = 1 << 25


@dataclass
class ShallowCaptureResult:
    """What one captured forward leaves behind; every tensor is detached.

    `v_hat` `[B, m, D]` float32: Eq. 4, sum_i w_i H_i[visual positions] over layers 1..k (zero where
    the position is invalid). `mass` `[B, m]` float32 or None (degree not captured): the sum over
    layers 1..k, heads and text queries of the attention probability on each image position, Eq. 5
    before its normalisation. `valid` `[B, m]` bool: the visual token is inside the sequence (False for
    samples without an image and for image positions cut off by truncation). `positions` is the VLM's
    `visual_positions` tensor of that forward (the same object), to match the result to its output.
    """

    v_hat: Tensor
    mass: Tensor | None
    valid: Tensor
    positions: Tensor

    @property
    def samples(self) -> Tensor:
        """Bool `[B]`: the sample has at least one visual token in the sequence (it takes part in BASIC)."""
        return self.valid.any(dim=-1)

    def degree(self, mode: str = "auto") -> Tensor:
        """The supervision degree `a` `[B, m]` float32, summing to 1 over each sample's valid positions.

        `auto`: the captured attention mass normalised (Eq. 5); a sample whose text never attends to its
        image (no text after it) falls back to `equal`. `equal`: 1/m over the valid positions. Rows of
        samples without an image are all zero.
        """
        valid = self.valid.to(torch.float32)
        equal = valid / valid.sum(dim=-1, keepdim=True).clamp_min(1.0)
        if mode == "equal":
            return equal
        if mode != "auto":
            raise ValueError(f"degree mode must be 'auto' or 'equal', got {mode!r}")
        if self.mass is None:
            raise ValueError("degree 'auto' needs the attention mass; capture with attention=True")
        mass = self.mass * valid
        total = mass.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, mass / total.clamp_min(torch.finfo(torch.float32).tiny), equal)


@dataclass
class _Step:
    """Per-forward buffers, allocated when the VLM has spliced its inputs."""

    positions: Tensor  # [B, m] long, -1 = invalid
    valid: Tensor  # [B, m] bool
    gather: Tensor  # [B, m] long, invalid positions clamped to 0
    attention_mask: Tensor  # [B, L] bool, real tokens
    query_mask: Tensor  # [B, L] bool, text queries of samples with an image
    query_start: int  # first row any sample needs: the earliest end of an image + 1 (causal attention)
    v_hat: Tensor  # [B, m, D] float32
    mass: Tensor | None  # [B, m] float32
    empty: bool  # no sample has an image: nothing to capture
    hidden_calls: dict[int, int] = field(default_factory=dict)
    attention_calls: dict[int, int] = field(default_factory=dict)


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    """The capture's matmuls run in float32 even inside the training loop's bf16 autocast."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The causal LM's decoder layers (`model.layers` for Llama, Mistral, Gemma, Phi3)."""
    get_decoder = getattr(llm, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else getattr(llm, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(llm).__name__}: cannot find the decoder layers (expected llm.get_decoder().layers, a "
            "ModuleList); BASIC's capture supports Llama-style causal LMs"
        )
    return layers


def _original_function(original: str, module: nn.Module) -> Callable[..., Any]:
    """The attention function the model would have used: the registered one, or its own eager function."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        if original == "eager":
            raise ValueError(f"{type(module).__module__} has no eager_attention_forward to delegate to")
        eager = _no_eager_function(type(module).__module__)
    return ALL_ATTENTION_FUNCTIONS.get_interface(original, eager)


def _no_eager_function(module_name: str) -> Callable[..., Any]:
    """The default for `get_interface`, which transformers falls back to only for an unset implementation."""

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"{module_name} has no eager_attention_forward to delegate to")

    return missing


def _make_capture_function(original: str) -> Callable[..., Any]:
    def capture_attention(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        # The output always comes from the original (fast) implementation; capturing layers only add a
        # side computation of the text-query rows.
        out = _original_function(original, module)(module, query, key, value, attention_mask, *args, **kwargs)
        hook = getattr(module, CAPTURE_ATTR, None)
        if hook is not None:
            capture, layer = hook
            capture._on_attention(layer, module, query, key, attention_mask, kwargs)
        return out

    capture_attention.__name__ = f"{CAPTURE_PREFIX}{original}"
    return capture_attention


def capture_implementation(original: str) -> str:
    """Register (once) and return the capturing attention implementation wrapping `original`."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if original.startswith(CAPTURE_PREFIX):
        raise ValueError(
            f"the LLM's attention is already '{original}': another BASIC capture is active on this model; "
            "nest no captures"
        )
    if original != "eager" and original not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {original!r} is not registered in transformers")
    name = CAPTURE_PREFIX + original
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_capture_function(original))
        # Same mask as the original gets (None for sdpa's causal skip, 2D for flash, 4D otherwise);
        # an original without a mask function gets none either way.
        if original in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            # transformers' mapping is an unannotated dict literal, which mypy infers as `builtins.function`.
            mask_function = cast("Callable[..., Any]", ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[original])
            AttentionMaskInterface.register(name, mask_function)
    return name


class ShallowLayerCapture:
    """Context manager: while active, one VLM forward records V_hat (Eq. 4) and the attention mass (Eq. 5).

    Layers 1..k are `decoder_layers(llm)[0..k-1]` (HF `hidden_states[1..k]` for k < number of layers).
    V_hat is accumulated layer by layer into one `[B, m, D]` float32 buffer by forward hooks. With
    `attention=True` the LLM's attention implementation is swapped, for the duration of the context, for
    a wrapper that delegates every layer's output to the original implementation (sdpa / flash / eager)
    and, for layers 1..k, recomputes only the text-query rows of softmax(q k^T * scaling + mask) from
    the q/k it receives (after RoPE; q k^T in their dtype, the rest in float32), in chunks of at most
    `chunk_elements` scores, reducing them at once to a `[B, m]` sum. Nothing is captured outside the
    context, so gradient checkpointing's recomputation during backward (after the context) adds nothing.
    `result` holds the capture after exit (None when no VLM forward ran inside).

    Assumes causal attention: text queries before an image cannot attend to it, so only rows after the
    earliest image end are computed.
    """

    def __init__(
        self,
        vlm: VLM,
        layers: int,
        weights: Tensor,
        *,
        attention: bool = True,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        self.vlm = vlm
        self.llm = vlm.llm
        all_layers = decoder_layers(self.llm)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= len(all_layers):
            raise ValueError(
                f"basic.layers: k must be an int in [1, {len(all_layers)}] (the LLM has {len(all_layers)} "
                f"decoder layers), got {layers!r}"
            )
        if weights.ndim != 1 or weights.shape[0] != layers:
            raise ValueError(f"weights must be 1-D of length k={layers}, got shape {tuple(weights.shape)}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.k = layers
        self.layers = list(all_layers[:layers])
        # Python floats: multiplying by them needs no host-to-device copy per layer and step.
        self.weights = [float(w) for w in weights.detach().to(torch.float64)]
        self.attention = attention
        self.chunk_elements = chunk_elements
        self.result: ShallowCaptureResult | None = None
        self._step: _Step | None = None
        self._forwards = 0
        self._cleanup: contextlib.ExitStack | None = None

    # --- context ---

    def __enter__(self) -> ShallowLayerCapture:
        if not hasattr(self.vlm, "splice_hooks"):
            raise ValueError(f"{type(self.vlm).__name__} has no splice_hooks: BASIC needs core.models.VLM")
        self.result, self._step, self._forwards = None, None, 0
        stack = contextlib.ExitStack()
        try:
            self.vlm.splice_hooks.append(self._on_splice)
            stack.callback(self.vlm.splice_hooks.remove, self._on_splice)
            for i, layer in enumerate(self.layers):
                handle = layer.register_forward_hook(self._hidden_hook(i))
                stack.callback(handle.remove)
            if self.attention:
                self._swap_attention(stack)
        except BaseException:
            stack.close()
            raise
        self._cleanup = stack
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._cleanup is not None
        self._cleanup.close()
        self._cleanup = None
        step, self._step = self._step, None
        if exc_type is None:
            self.result = self._finish(step)

    def _swap_attention(self, stack: contextlib.ExitStack) -> None:
        configs = {id(self.llm.config): self.llm.config}
        for layer in self.layers:
            attn = getattr(layer, "self_attn", None)
            if attn is None:
                raise ValueError(
                    f"{type(layer).__name__} has no self_attn module; BASIC's supervision degree needs it "
                    "(use degree 'equal' for this model)"
                )
            configs.setdefault(id(attn.config), attn.config)
        originals = {key: cfg._attn_implementation for key, cfg in configs.items()}
        if len(set(originals.values())) != 1:
            raise ValueError(f"the LLM's layers use different attention implementations: {originals}")
        name = capture_implementation(next(iter(originals.values())))
        for i, layer in enumerate(self.layers):
            setattr(layer.self_attn, CAPTURE_ATTR, (self, i))
            stack.callback(delattr, layer.self_attn, CAPTURE_ATTR)
        for key, cfg in configs.items():
            cfg._attn_implementation = name
            stack.callback(setattr, cfg, "_attn_implementation", originals[key])

    # --- hooks ---

    def _on_splice(self, spliced: SplicedInputs) -> None:
        self._forwards += 1
        if self._forwards > 1:
            raise RuntimeError(
                "BASIC capture: a second VLM forward inside one forward_context; run exactly one forward "
                "per context (and backward after it exits)"
            )
        positions: Tensor = spliced.visual_positions
        attention_mask = spliced.attention_mask.bool()
        batch, length = attention_mask.shape
        valid = positions >= 0
        if spliced.visual_tokens is None or not bool(valid.any()):
            self._step = _Step(
                positions, valid, positions, attention_mask, attention_mask, length,
                torch.empty(0), None, empty=True,
            )  # fmt: skip
            return
        dim = spliced.inputs_embeds.shape[-1]
        device = positions.device
        gather = positions.clamp_min(0)
        # Invalid positions go to a spare column: scattering them onto 0 could unmark a real visual token.
        is_visual = torch.zeros(batch, length + 1, dtype=torch.bool, device=device)
        is_visual.scatter_(1, positions.masked_fill(~valid, length), True)
        is_visual = is_visual[:, :length]
        query_mask = attention_mask & ~is_visual & valid.any(dim=-1, keepdim=True)
        # Under causal attention a text query before its image gives it zero probability, so the rows
        # from the earliest end of an image on hold all the mass (stage 1: the caption, not 576 image rows).
        ends = positions.masked_fill(~valid, -1).max(dim=1).values
        start = int(ends[valid.any(dim=1)].min()) + 1
        self._step = _Step(
            positions=positions,
            valid=valid,
            gather=gather,
            attention_mask=attention_mask,
            query_mask=query_mask,
            query_start=start,
            v_hat=torch.zeros(batch, positions.shape[1], dim, dtype=torch.float32, device=device),
            mass=torch.zeros(batch, positions.shape[1], dtype=torch.float32, device=device)
            if self.attention
            else None,
            empty=False,
        )

    def _hidden_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            step = self._step
            if step is None or step.empty:
                return
            step.hidden_calls[layer] = step.hidden_calls.get(layer, 0) + 1
            hidden = output[0] if isinstance(output, tuple | list) else output
            with torch.no_grad():
                rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
                picked = hidden.detach()[rows, step.gather].to(torch.float32)  # [B, m, D]
                picked.masked_fill_(~step.valid.unsqueeze(-1), 0.0)
                step.v_hat.add_(picked, alpha=self.weights[layer])

        return hook

    def _on_attention(
        self,
        layer: int,
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        attention_mask: Tensor | None,
        kwargs: dict[str, Any],
    ) -> None:
        step = self._step
        if step is None or step.empty:
            return
        assert step.mass is not None
        step.attention_calls[layer] = step.attention_calls.get(layer, 0) + 1
        batch, heads, length, head_dim = query.shape
        kv_heads = key.shape[1]
        if (batch, length) != tuple(step.attention_mask.shape) or key.shape[2] != length:
            raise RuntimeError(
                f"BASIC capture, layer {layer + 1}: query {tuple(query.shape)} / key {tuple(key.shape)} do not "
                f"match the spliced batch {tuple(step.attention_mask.shape)}; is a KV cache in use?"
            )
        if heads % kv_heads:
            raise RuntimeError(
                f"layer {layer + 1}: {heads} query heads are not a multiple of {kv_heads} kv heads"
            )
        groups = heads // kv_heads
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", head_dim**-0.5)
        softcap = kwargs.get("softcap")
        sliding = kwargs.get("sliding_window")
        m = step.gather.shape[1]
        rows = max(1, self.chunk_elements // (batch * heads * length))
        with torch.no_grad(), _no_autocast(query.device):
            # q k^T in the activations' dtype as the model's own eager path does (bf16 tensor cores on GPU,
            # float32 accumulation); scaling, mask and softmax in float32.
            keys_t = key.detach().unsqueeze(2).transpose(-1, -2)  # [B, kv, 1, d, L]
            index = step.gather[:, None, None, :]
            for start in range(step.query_start, length, rows):
                end = min(length, start + rows)
                n = end - start
                q = query.detach()[:, :, start:end].reshape(batch, kv_heads, groups, n, head_dim)
                # Query head h reads kv head h // groups, as repeat_kv lays them out.
                # In place from here on: one float32 score buffer and the probabilities live at a time.
                scores = (q @ keys_t).reshape(batch, heads, n, length).to(torch.float32).mul_(scaling)
                if softcap is not None:
                    scores.div_(softcap).tanh_().mul_(softcap)
                self._mask_(scores, attention_mask, start, end, step, sliding)
                probs = scores.softmax(dim=-1)
                del scores
                on_image = probs.gather(-1, index.expand(batch, heads, n, m)).sum(dim=1)  # [B, n, m]
                # where, not a product: a fully masked (NaN) row of a padded query must not leak in.
                on_image = torch.where(step.query_mask[:, start:end, None], on_image, 0.0)
                step.mass.add_(on_image.sum(dim=1) * step.valid)

    @staticmethod
    def _mask_(
        scores: Tensor, mask: Tensor | None, start: int, end: int, step: _Step, sliding: int | None
    ) -> Tensor:
        """Apply, in place, the mask the original implementation got; rebuilt when it was None (sdpa) or 2D (flash)."""
        if mask is not None and mask.ndim == 4:
            rows = mask[:, :, start:end, : scores.shape[-1]]
            if rows.dtype == torch.bool:
                return scores.masked_fill_(~rows, float("-inf"))
            return scores.add_(rows.to(scores.dtype))
        length = scores.shape[-1]
        device = scores.device
        keys = torch.arange(length, device=device)
        queries = torch.arange(start, end, device=device).unsqueeze(1)
        allowed = keys <= queries  # [n, L]
        if sliding is not None:
            allowed = allowed & (keys > queries - sliding)
        real = mask.bool()[:, :length] if mask is not None and mask.ndim == 2 else step.attention_mask
        allowed = allowed.unsqueeze(0) & real[:, None, :]  # [B, n, L]
        return scores.masked_fill_(~allowed.unsqueeze(1), float("-inf"))

    # --- result ---

    def _finish(self, step: _Step | None) -> ShallowCaptureResult | None:
        if step is None:
            return None  # no VLM forward ran inside the context
        if step.empty:
            return ShallowCaptureResult(
                torch.zeros(*step.positions.shape, 0), None, step.valid, step.positions
            )
        expected = {i: 1 for i in range(self.k)}
        if step.hidden_calls != expected:
            raise RuntimeError(
                f"BASIC capture: decoder layers 1..{self.k} ran {step.hidden_calls} times in one forward, "
                "expected once each; the LLM did not run through its decoder layers as expected"
            )
        if self.attention and step.attention_calls != expected:
            impl = self.llm.config._attn_implementation
            raise RuntimeError(
                f"BASIC capture: the attention function of layers 1..{self.k} ran {step.attention_calls} "
                f"times, expected once each (attention implementation {impl!r}); use degree 'equal' if this "
                "model does not dispatch attention through transformers' AttentionInterface"
            )
        return ShallowCaptureResult(step.v_hat, step.mass, step.valid, step.positions)
