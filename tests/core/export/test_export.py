"""Exports of tiny trials reload through transformers and compute exactly what seagrid's VLM computes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import export_fixtures as fx
import numpy as np
import pytest
import torch
from PIL import Image

from core.export.config import ExportStepConfig, export_config
from core.export.step import HF_DIR, export_step, write_export
from core.export.support import ExportRefused, check_exportable, refusal
from core.models.vision import ENCODERS

CASES = [(e, s) for e in fx.HF_ENCODERS for s in fx.STAGES]
QUESTION = "Is there a red circle in the image?"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    return {
        e: fx.write_stage_outputs(tmp_path_factory.mktemp(e), e, seed=i) for i, e in enumerate(fx.HF_ENCODERS)
    }


@pytest.fixture(scope="module")
def exports(outputs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("exports")
    done = {}
    for encoder, stage in CASES:
        config = export_config(fx.trial_config(encoder), stage)
        done[encoder, stage] = write_export(
            config, fx.deps_of(outputs[encoder], stage), root / f"{encoder}-{stage}"
        )
    return done


def _seagrid(encoder: str, stage: str, outputs) -> tuple:
    """seagrid's own model of the stage, with the export's bf16 weights, computing in float32."""
    from core.evaluation.step import load_trained

    cfg = fx.trial_config(encoder)
    vlm, tokenizer = load_trained(
        cfg.model, stage, {stage: str(outputs[encoder][stage])}, dtype=torch.bfloat16
    )
    return vlm.float(), tokenizer


def _load(path: Path, **kwargs):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path, **kwargs)


def _image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _expanded(ids: list[int], image_token_id: int, count: int) -> list[int]:
    from core.models.constants import IMAGE_TOKEN_INDEX

    out: list[int] = []
    for i in ids:
        out += [image_token_id] * count if i == IMAGE_TOKEN_INDEX else [i]
    return out


def _messages(question: str = QUESTION, answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
@pytest.mark.parametrize(("encoder", "stage"), CASES)
def test_logits_equal_seagrid(encoder, stage, outputs, exports):
    """Training-format ids (question and answer, chat template) through both models: same logits."""
    from core.data.chat import encode_chat

    vlm, tokenizer = _seagrid(encoder, stage, outputs)
    llava, processor = _load(exports[encoder, stage])
    conv = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "yes"}]
    ids = encode_chat("vicuna_v1", conv, tokenizer).input_ids
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    hf_ids = _expanded(ids, llava.config.image_token_id, vlm.num_visual_tokens)
    rendered = processor.apply_chat_template(_messages(answer="yes"))
    assert processor(text=rendered, images=_image(), return_tensors="pt").input_ids[0].tolist() == hf_ids
    with torch.no_grad():
        ours = vlm({"input_ids": torch.tensor([ids]), "pixel_values": pixels}).logits
        theirs = llava(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits
    vocab = ours.shape[-1]
    assert theirs.shape[-1] == vocab + 1  # the image token's new row
    assert float((ours - theirs[..., :vocab]).abs().max()) <= 1e-5


def _seagrid_answer(vlm, tokenizer, pixels: torch.Tensor, max_new_tokens: int) -> list[int]:
    from core.evaluation.generate import Prompt, generation_prompt_ids, greedy_generate, stop_token_ids

    ids = generation_prompt_ids("vicuna_v1", QUESTION, tokenizer, has_image=True)
    (tokens,) = greedy_generate(
        vlm,
        [Prompt(ids, pixels)],
        max_new_tokens=max_new_tokens,
        stop_ids=stop_token_ids("vicuna_v1", tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokens


@pytest.mark.parametrize(("encoder", "stage"), CASES)
def test_greedy_generation_equal_seagrid(encoder, stage, outputs, exports):
    """The processor's prompt for a question is seagrid's generation prompt; greedy answers agree."""
    from core.evaluation.generate import cut_at_stop, generation_prompt_ids, stop_token_ids

    vlm, tokenizer = _seagrid(encoder, stage, outputs)
    llava, processor = _load(exports[encoder, stage])
    prompt = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    inputs = processor(text=prompt, images=_image(seed=1), return_tensors="pt")
    ours_ids = generation_prompt_ids("vicuna_v1", QUESTION, tokenizer, has_image=True)
    assert inputs.input_ids[0].tolist() == _expanded(
        ours_ids, llava.config.image_token_id, vlm.num_visual_tokens
    )
    ours = _seagrid_answer(vlm, tokenizer, inputs.pixel_values[0], 12)
    with torch.no_grad():
        out = llava.generate(**inputs, max_new_tokens=12, do_sample=False)
    theirs = cut_at_stop(out[0, inputs.input_ids.shape[1] :].tolist(), stop_token_ids("vicuna_v1", tokenizer))
    assert theirs == ours and len(ours) > 0


def test_chat_template_takes_string_content_and_rides_on_the_tokenizer(exports):
    """lmms-eval's llava_hf templates `<image>\n...` text with the tokenizer alone: same prompt as HF items;
    an image after the question moves to the front (LLaVA's rule, as seagrid's templates do)."""
    from transformers import AutoProcessor, AutoTokenizer

    path = exports["tiny-siglip", "stage1"]
    processor = AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    items = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    for content in (f"<image>\n{QUESTION}", f"{QUESTION} <image>"):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        assert text == items
    assert items.endswith(f"USER: <image>\n{QUESTION} ASSISTANT:")


@pytest.mark.parametrize("encoder", fx.HF_ENCODERS)
def test_pipeline_answers_a_question(encoder, outputs, exports):
    """transformers' image-text-to-text pipeline loads the export by path and answers as seagrid does."""
    from transformers import AutoProcessor, pipeline

    path = exports[encoder, "stage2"]
    vlm, tokenizer = _seagrid(encoder, "stage2", outputs)
    image = _image(seed=2)
    pixels = AutoProcessor.from_pretrained(path)(
        text="<image>", images=image, return_tensors="pt"
    ).pixel_values
    expected = tokenizer.decode(_seagrid_answer(vlm, tokenizer, pixels[0], 8), skip_special_tokens=True)
    pipe = pipeline("image-text-to-text", model=str(path), dtype=torch.float32)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}
    ]
    (answer,) = pipe(text=messages, max_new_tokens=8, do_sample=False, return_full_text=False)
    assert answer["generated_text"] == expected and expected.strip()


@pytest.mark.parametrize("encoder", fx.HF_ENCODERS)
def test_layout_config_and_card(encoder, exports):
    """bf16 safetensors of all three parts, the image token in tokenizer and embeddings, the registry's
    feature layer and selection, a model card with the metrics and the seagrid version."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = exports[encoder, "stage2"]
    spec = ENCODERS[encoder]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["vision_feature_layer"] == spec.feature_layer
    assert config["vision_feature_select_strategy"] == ("default" if spec.num_prefix_tokens else "full")
    assert config["image_seq_length"] == spec.num_patches
    prefixes, keys = set(), set()
    for shard in path.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                assert f.get_slice(key).get_dtype() == "BF16", key
                prefixes.add(key.split(".")[0])
                keys.add(key)
    # transformers writes llava-hf's own layout (what vLLM and older transformers read)
    assert prefixes == {"vision_tower", "multi_modal_projector", "language_model"}
    assert {"language_model.lm_head.weight", "multi_modal_projector.linear_2.weight"} <= keys
    assert "_name_or_path" not in config["text_config"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids("<image>") == config["image_token_index"] == len(tokenizer) - 1
    assert tokenizer("a <image> b").input_ids.count(config["image_token_index"]) == 1
    assert config["text_config"]["vocab_size"] == len(tokenizer)
    card = (path / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "| eval/pope | 0.625 |" in card
    assert "seagrid version: 0.1.0" in card and f"vision encoder: `{encoder}`" in card


def test_export_step_writes_hf_dir_and_identity_ignores_trial(outputs, tmp_path):
    """The graph-step form writes `<out>/hf`; the config's hash covers the model, not the trial's extras."""
    from core.config.identity import content_hash, identity_dict

    cfg = fx.trial_config("tiny-hf-clip")
    config = export_config(cfg, "stage1")
    out = export_step(config, fx.deps_of(outputs["tiny-hf-clip"], "stage1"), tmp_path)
    assert out == tmp_path / HF_DIR and (out / "config.json").is_file()
    other = export_config(fx.trial_config("tiny-hf-clip", seed=7), "stage1")
    assert content_hash(identity_dict(other)) == content_hash(identity_dict(config))
    squared = export_config(fx.trial_config("tiny-hf-clip", eval={"image_mode": "square"}), "stage1")
    assert content_hash(identity_dict(squared)) != content_hash(identity_dict(config))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_failed_export_leaves_nothing_and_keeps_an_earlier_one(outputs, tmp_path):
    stage_dirs = fx.write_stage_outputs(tmp_path / "trial", "tiny-hf-clip")
    config = export_config(fx.trial_config("tiny-hf-clip"), "stage1")
    out_root = tmp_path / "out"
    target = out_root / "model"
    weights = stage_dirs["stage1"] / "adapter" / "adapter.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])  # truncated
    with pytest.raises(ValueError, match="truncated"):
        write_export(config, {"stage1": stage_dirs["stage1"]}, target)
    assert _leftovers(out_root) == []
    weights.write_bytes(good)
    write_export(config, {"stage1": stage_dirs["stage1"]}, target)
    before = (target / "model.safetensors").read_bytes()
    weights.write_bytes(good[:100])
    with pytest.raises(ValueError):
        write_export(config, {"stage1": stage_dirs["stage1"]}, target)
    assert _leftovers(out_root) == ["model"] and (target / "model.safetensors").read_bytes() == before


def test_every_registry_encoder_exports_or_is_refused_with_a_reason():
    from core.export.processor import image_processor_kwargs

    for encoder_id, spec in ENCODERS.items():
        if spec.kind == "open_clip":
            with pytest.raises(ExportRefused, match="open_clip towers are not transformers models"):
                check_exportable(spec, "mlp2x_gelu")
            continue
        facts = check_exportable(spec, "mlp2x_gelu")
        assert facts.num_image_tokens == spec.num_patches, encoder_id
        assert image_processor_kwargs(spec, "pad")["do_pad"] is True
    with pytest.raises(ExportRefused, match="linear-gelu-linear"):
        check_exportable(ENCODERS["tiny-hf-clip"], "linear")
    assert refusal("tiny-dinov2", "mlp2x_gelu") is None
    assert "open_clip" in refusal("tiny-clip", "mlp2x_gelu") and "linear" in refusal("tiny-siglip", "linear")


def test_refused_export_reads_nothing_and_writes_nothing(tmp_path):
    config = export_config(fx.trial_config("tiny-clip"), "stage1")
    with pytest.raises(ExportRefused, match="tiny-clip"):
        write_export(config, {"stage1": tmp_path / "missing"}, tmp_path / "out" / "model")
    assert _leftovers(tmp_path / "out") == []


def test_config_is_strict():
    with pytest.raises(ValueError, match="extra"):
        ExportStepConfig.model_validate(
            {**export_config(fx.trial_config("tiny-siglip"), "stage1").model_dump(), "x": 1}
        )


def _seagrid_pixels(image: Image.Image, spec, mode: str) -> torch.Tensor:
    from core.data import images

    if hasattr(images, "preprocess_for"):  # honours the registry's resize and crop_pct
        return images.preprocess_for(image, spec, mode)
    if spec.resize != "shortest_edge" or spec.crop_pct != 1:
        pytest.skip(f"this seagrid's preprocessing ignores {spec.id}'s resize={spec.resize}/crop_pct")
    return images.preprocess(image, spec.image_size, spec.mean, spec.std, mode)


PIXEL_ENCODERS = (
    "tiny-hf-clip",
    "tiny-siglip",
    "tiny-dinov2",
    "clip-l-336",
    "siglip-so400m-384",
    "dinov2-l-224",
)
SIZES = ((64, 64), (100, 80), (64, 192), (400, 300))


@pytest.mark.parametrize("encoder", PIXEL_ENCODERS)
@pytest.mark.parametrize("mode", ["pad", "square"])
def test_processor_pixels_equal_seagrid(encoder, mode, tmp_path):
    """With transformers' PIL backend the processor's pixels are seagrid's, bit for bit; its default
    (torchvision) backend's bicubic differs by at most two 8-bit levels, on few pixels (measured)."""
    from transformers import AutoProcessor

    from core.export.processor import build_processor
    from core.export.support import check_exportable
    from core.models import load_llm

    spec = ENCODERS[encoder]
    _, tokenizer = load_llm(fx.LLM)
    from core.export.model import add_image_token

    add_image_token(tokenizer)
    build_processor(spec, mode, tokenizer, "vicuna_v1", check_exportable(spec, "mlp2x_gelu")).save_pretrained(
        tmp_path
    )
    exact = AutoProcessor.from_pretrained(tmp_path, backend="pil")
    default = AutoProcessor.from_pretrained(tmp_path)
    level = 1 / 255 / min(spec.std)
    for i, (w, h) in enumerate(SIZES):
        image = _image(w, h, seed=i)
        ours = _seagrid_pixels(image, spec, mode)
        assert tuple(ours.shape) == (3, spec.image_size, spec.image_size)
        pil = exact.image_processor(image, return_tensors="pt").pixel_values[0]
        assert torch.allclose(pil, ours, rtol=0, atol=1e-6), (w, h)
        fast = default.image_processor(image, return_tensors="pt").pixel_values[0]
        diff = (fast - ours).abs()
        assert float(diff.max()) <= 2 * level + 1e-5 and float(diff.mean()) <= 0.05 * level, (w, h)


def test_export_time_is_small(outputs, tmp_path):
    """A tiny stage-2 export takes well under the smoke grid's budget (measured: under a second)."""
    import time

    config = export_config(fx.trial_config("tiny-siglip"), "stage2")
    start = time.perf_counter()
    write_export(config, fx.deps_of(outputs["tiny-siglip"], "stage2"), tmp_path / "m")
    assert time.perf_counter() - start < 30
    assert os.listdir(tmp_path) == ["m"]


def test_a_tower_with_its_text_half_is_not_taken_for_a_vision_model():
    from core.export.model import _vision_module
    from core.models import load_encoder

    with pytest.raises(ValueError, match="text_tower=False"):
        _vision_module(load_encoder("tiny-hf-clip", text_tower=True))
    assert type(_vision_module(load_encoder("tiny-hf-clip", text_tower=False))).__name__ == "CLIPVisionModel"
