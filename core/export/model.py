"""A seagrid VLM re-assembled as transformers' LlavaForConditionalGeneration, image token added."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from core.data.templates import DEFAULT_IMAGE_TOKEN
from core.export.support import PROJECTOR_ACT, VisionFacts
from core.models.llm import input_embeddings

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration

    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

# LlavaMultiModalProjector's names for the two linear layers of seagrid's Sequential mlp2x_gelu.
PROJECTOR_KEYS = {"0.": "linear_1.", "2.": "linear_2."}


def add_image_token(tokenizer: Tokenizer) -> int:
    """Add `<image>` as a special token (as llava-hf checkpoints have it) unless there; its id."""
    from tokenizers import AddedToken

    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        token = AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)
        tokenizer.add_tokens([token], special_tokens=True)
    return int(cast(int, tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)))  # stubs: int | list[int]


def _vision_module(tower: Any) -> nn.Module:
    """The tower's transformers model: what `AutoModel` builds for its vision config (CLIPVisionModel,
    SiglipVisionModel, Dinov2Model), which is how `load_trained` loads it (no text tower)."""
    model = tower.model
    if hasattr(model, "text_model"):
        raise ValueError(
            f"encoder {tower.spec.id!r} was loaded with its text tower; export a tower loaded with "
            "text_tower=False (core.evaluation.step.load_trained does)"
        )
    return model


def _portable(config: Any) -> dict[str, Any]:
    """A sub-model's config without the local path it was loaded from (the export travels)."""
    data = config.to_dict()
    data.pop("_name_or_path", None)
    return data


def _projector(adapter: nn.Module, config: Any) -> nn.Module:
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    state = {}
    for key, value in adapter.state_dict().items():
        prefix = next(p for p in PROJECTOR_KEYS if key.startswith(p))
        state[PROJECTOR_KEYS[prefix] + key[len(prefix) :]] = value
    with torch.device("meta"):
        projector = LlavaMultiModalProjector(config)
    projector.load_state_dict(state, strict=True, assign=True)
    return projector


def _grow_embeddings(llava: LlavaForConditionalGeneration, size: int) -> None:
    """Give the LLM `size` token rows; new input and output rows are the mean of the old ones (llava-hf's
    choice, without its random noise, so an export is deterministic)."""
    old = input_embeddings(llava).weight.shape[0]
    if size <= old:
        return
    llava.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for weight in {id(w): w for w in (input_embeddings(llava).weight, llava.lm_head.weight)}.values():
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)


def llava_from_vlm(vlm: VLM, tokenizer: Tokenizer, facts: VisionFacts, dtype: torch.dtype) -> Any:
    """`LlavaForConditionalGeneration` computing what `vlm` computes, its modules reused (the VLM is consumed:
    its parts are cast to `dtype`); `tokenizer` gains the image token (its row added to the LLM's tables)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    llm = vlm.llm
    vision = _vision_module(vlm.vision)
    image_token_id = add_image_token(tokenizer)
    config = LlavaConfig(
        vision_config=_portable(vision.config),
        text_config=_portable(llm.config),
        image_token_index=image_token_id,
        image_seq_length=facts.num_image_tokens,
        projector_hidden_act=PROJECTOR_ACT[vlm.adapter_name],
        vision_feature_layer=facts.feature_layer,
        vision_feature_select_strategy=facts.select_strategy,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower = vision
    llava.model.multi_modal_projector = _projector(vlm.adapter, config)
    llava.model.language_model = llm.get_decoder()
    llava.lm_head = llm.get_output_embeddings()
    if config.tie_word_embeddings:
        llava.tie_weights()
    llava.to(dtype)  # type: ignore[arg-type]  # transformers types PreTrainedModel.to's wrapper without its arguments
    _grow_embeddings(llava, len(tokenizer))
    llava.generation_config = _generation_config(llm, tokenizer, image_token_id)
    return llava.eval()


def _generation_config(llm: Any, tokenizer: Tokenizer, image_token_id: int) -> Any:
    """The LLM's generation settings; the image token is never generated (its output row is new, and a
    placeholder is no answer), and padding uses the tokenizer's pad token as in seagrid's evaluation."""
    import copy

    config = copy.deepcopy(llm.generation_config)
    config.suppress_tokens = [image_token_id]
    config.pad_token_id = tokenizer.pad_token_id
    return config
