"""Evaluation: benchmark readers, scoring end to end, generation equivalences, synthetic sets, diagnostics, evaluate()."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from core.data import synthetic_eval as syn
from core.data.synthetic import COLOURS, SyntheticSpec, draw_sample
from core.evaluation.benchmarks import BenchmarkFileError, read_mc, read_pope, read_vqa, run_benchmark
from core.evaluation.config import BenchmarkConfig, EvalConfig
from core.evaluation.diagnostics import DiagnosticsProbe, alignment_diagnostics, read_curve, visual_tokens
from core.evaluation.generate import (
    Prompt,
    answer_ids,
    continuation_logliks,
    generation_prompt_ids,
    greedy_generate,
)
from core.evaluation.heldout import load_heldout
from core.evaluation.pictures import curve_picture, pca_2d
from core.evaluation.run import evaluate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEMPLATE = "vicuna_v1"


# ---------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from core.models import build_vlm

    # One thread: these models are tiny, and on a shared 2-core machine a second OpenMP thread makes
    # every forward pass wait for the busy core (x50 slower measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vlm, tokenizer = build_vlm("tiny-llama", "tiny-clip")
    vlm.eval()
    yield vlm, tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wild(tiny):
    """A float64 copy with large random LLM weights, so greedy decoding produces varied tokens and
    float rounding cannot flip an argmax between batched and unbatched runs."""
    vlm, _ = tiny
    model = copy.deepcopy(vlm).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model


def constant_answer(vlm, token_id: int):
    """A copy whose LLM always puts its highest logit (10 above the rest) on `token_id`."""
    model = copy.deepcopy(vlm)
    head = model.llm.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.bias[token_id] = 10.0
    model.llm.lm_head = new
    return model


def single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == 1, (text, ids)
    return ids[0]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def solid_png(path: Path, colour=(200, 30, 30), size: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


@pytest.fixture(scope="module")
def small_eval_cfg() -> EvalConfig:
    return EvalConfig.model_validate(
        {
            "enabled": True,
            "synthetic": {"num_images": 6, "num_text_questions": 8},
            "diagnostics": {"heldout_samples": 8},
            "max_new_tokens": 4,
            "benchmarks": [
                {"name": "pope", "kind": "pope", "max_samples": 4},
                {"name": "vqa", "kind": "vqa", "max_samples": 4},
                {"name": "mmbench", "kind": "mc", "max_samples": 4, "mc_mode": "generate"},
                {"name": "sqa", "kind": "mc", "max_samples": 4},
                {"name": "mmlu", "kind": "text_mc", "max_samples": 4},
            ],
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------


def test_read_pope_joins_questions_to_labels(tmp_path: Path) -> None:
    ann = tmp_path / "coco"
    write_jsonl(
        ann / "coco_pope_random.json",
        [
            {"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"},
            {"question_id": 2, "image": "b.jpg", "text": "Is there a cat?", "label": "no"},
        ],
    )
    write_jsonl(ann / "coco_pope_popular.json", [{"question_id": 3, "label": "no"}])
    questions = write_jsonl(
        tmp_path / "llava_pope_test.jsonl",
        [
            {"question_id": 3, "image": "c.jpg", "text": "Is there a cup?", "category": "popular"},
            {"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "category": "random"},
            {"question_id": 2, "image": "b.jpg", "text": "Is there a cat?", "category": "random"},
        ],
    )
    joined = read_pope(ann, questions, ["random", "popular"])
    assert [(i.question_id, i.label, i.image.path) for i in joined["random"]] == [
        ("1", "yes", "a.jpg"),
        ("2", "no", "b.jpg"),
    ]
    assert [(i.question_id, i.label, i.text) for i in joined["popular"]] == [("3", "no", "Is there a cup?")]
    # Without a question file the label files carry the questions (COCO POPE layout).
    alone = read_pope(ann, None, ["random"])
    assert [(i.question_id, i.text, i.label) for i in alone["random"]] == [
        ("1", "Is there a dog?", "yes"),
        ("2", "Is there a cat?", "no"),
    ]


def test_read_pope_aligns_by_order_when_ids_differ_and_checks_images(tmp_path: Path) -> None:
    ann = tmp_path / "coco"
    write_jsonl(
        ann / "coco_pope_random.json",
        [
            {"question_id": 1, "image": "a.jpg", "label": "no"},
            {"question_id": 2, "image": "b.jpg", "label": "yes"},
        ],
    )
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 101, "image": "a.jpg", "text": "Q1", "category": "random"},
            {"question_id": 102, "image": "b.jpg", "text": "Q2", "category": "random"},
        ],
    )
    items = read_pope(ann, questions, ["random"])["random"]
    assert [(i.question_id, i.label) for i in items] == [("101", "no"), ("102", "yes")]
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"question_id": 101, "image": "b.jpg", "text": "Q1", "category": "random"},
            {"question_id": 102, "image": "a.jpg", "text": "Q2", "category": "random"},
        ],
    )
    with pytest.raises(BenchmarkFileError, match=r"bad\.jsonl:1: image 'b\.jpg'.*not aligned"):
        read_pope(ann, bad, ["random"])


def test_read_pope_malformed_lines_name_file_line_and_field(tmp_path: Path) -> None:
    ann = tmp_path / "coco"
    path = write_jsonl(
        ann / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "Q", "label": "yes"}, "{not json"],
    )
    with pytest.raises(BenchmarkFileError, match=re.escape(f"{path}:2: not valid JSON")):
        read_pope(ann, None, ["random"])
    write_jsonl(
        path,
        [
            {"question_id": 1, "image": "a.jpg", "text": "Q", "label": "yes"},
            {"question_id": 2, "image": "a.jpg", "text": "Q"},
        ],
    )
    with pytest.raises(BenchmarkFileError, match=re.escape(f"{path}:2: missing field 'label'")):
        read_pope(ann, None, ["random"])
    write_jsonl(path, [{"question_id": 1, "image": "a.jpg", "text": "Q", "label": "maybe"}])
    with pytest.raises(BenchmarkFileError, match=re.escape(f"{path}:1: field 'label' must be 'yes' or 'no'")):
        read_pope(ann, None, ["random"])
    with pytest.raises(
        BenchmarkFileError, match="coco_pope_popular.json: POPE labels of split 'popular' not found"
    ):
        read_pope(ann, None, ["popular"])


def test_read_vqa_answer_formats(tmp_path: Path) -> None:
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 7, "image": "x.jpg", "text": "What?"},
            {"question_id": "8", "image": "y.jpg", "text": "Why?"},
        ],
    )
    vqav2 = tmp_path / "ann.json"
    vqav2.write_text(
        json.dumps(
            {
                "annotations": [
                    {"question_id": 7, "answers": [{"answer": "red"}, {"answer": "Red"}]},
                    {"question_id": 8, "answers": [{"answer": "because"}]},
                    {"question_id": 9, "answers": [{"answer": "unused"}]},
                ]
            }
        )
    )
    items = read_vqa(questions, vqav2)
    assert [(i.question_id, i.image.path, i.answers) for i in items] == [
        ("7", "x.jpg", ("red", "Red")),
        ("8", "y.jpg", ("because",)),
    ]
    textvqa = tmp_path / "textvqa.json"
    textvqa.write_text(
        json.dumps(
            {"data": [{"question_id": 7, "answers": ["a", "b"]}, {"question_id": 8, "answers": ["c"]}]}
        )
    )
    assert [i.answers for i in read_vqa(questions, textvqa)] == [("a", "b"), ("c",)]
    gqa = write_jsonl(
        tmp_path / "gqa.jsonl", [{"question_id": 7, "answer": "left"}, {"question_id": "8", "answer": "no"}]
    )
    assert [i.answers for i in read_vqa(questions, gqa)] == [("left",), ("no",)]
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"question_id": 7, "answers": ["x"]}])
    with pytest.raises(
        BenchmarkFileError, match=re.escape(f"{questions}:2: question_id 8 has no answers in {partial}")
    ):
        read_vqa(questions, partial)
    broken = write_jsonl(
        tmp_path / "broken.jsonl", [{"question_id": 7, "answers": ["x"]}, {"question_id": 8, "answers": [3]}]
    )
    with pytest.raises(BenchmarkFileError, match=re.escape(f"{broken}:2: answers[0] must be a string")):
        read_vqa(questions, broken)


def test_read_mc_formats(tmp_path: Path) -> None:
    jsonl = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {
                "question_id": "q1",
                "question": "Pick",
                "options": ["x", "y", "z"],
                "answer": "B",
                "image": "i.png",
                "hint": "H",
            },
            {"question": "Cols", "A": "one", "B": "two", "C": "", "answer": 0},
        ],
    )
    a, b = read_mc(jsonl)
    assert (a.question_id, a.options, a.answer, a.image.path, a.hint) == (
        "q1",
        ("x", "y", "z"),
        "B",
        "i.png",
        "H",
    )
    assert (b.question_id, b.options, b.answer, b.image) == ("2", ("one", "two"), "A", None)

    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    with (mmlu / "b_subject_test.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["Two, plus two?", "3", "4", "5", "6", "B"]])
    with (mmlu / "a_subject_test.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["Q?", "w", "x", "y", "z", "D"], ["Line\nbreak?", "w", "x", "y", "z", "A"]])
    items = read_mc(mmlu)
    assert [(i.question_id, i.question, i.answer) for i in items] == [
        ("a_subject_test-0", "Q?", "D"),
        ("a_subject_test-1", "Line\nbreak?", "A"),
        ("b_subject_test-0", "Two, plus two?", "B"),
    ]

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    tsv = tmp_path / "mmbench.tsv"
    with tsv.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "image"])
        w.writerow(
            [
                11,
                "Colour?",
                "nan",
                "red",
                "green",
                "nan",
                "nan",
                "A",
                base64.b64encode(buffer.getvalue()).decode(),
            ]
        )
    (item,) = read_mc(tsv)
    assert (item.question_id, item.options, item.answer, item.hint) == ("11", ("red", "green"), "A", None)
    assert item.image.open(None, "t").getpixel((0, 0)) == (1, 2, 3)

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q", "options": ["a", "b"], "answer": "C"}])
    with pytest.raises(
        BenchmarkFileError, match=re.escape(f"{bad}:1: field 'answer' must be a letter in AB")
    ):
        read_mc(bad)
    badcsv = tmp_path / "bad.csv"
    badcsv.write_text("Q?,a,b,c,d,A\nshort,row\n")
    with pytest.raises(BenchmarkFileError, match=re.escape(f"{badcsv}:2: expected question, options")):
        read_mc(badcsv)


# ---------------------------------------------------------------------------------------------------------
# Scoring end to end on hand-worked cases (an LLM whose answer is fixed)
# ---------------------------------------------------------------------------------------------------------


def test_pope_end_to_end_hand_worked(tiny, tmp_path: Path) -> None:
    vlm, tok = tiny
    ann, images = tmp_path / "coco", tmp_path / "img"
    solid_png(images / "a.png")
    labels = {"random": ["yes", "yes", "no", "no"], "popular": ["yes", "no", "no", "no"]}
    for split, labs in labels.items():
        write_jsonl(
            ann / f"coco_pope_{split}.json",
            [
                {"question_id": k, "image": "a.png", "text": f"Is there thing {k}?", "label": lab}
                for k, lab in enumerate(labs)
            ],
        )
    bench = BenchmarkConfig(
        name="pope",
        kind="pope",
        source="files",
        annotation_dir=str(ann),
        image_root=str(images),
        splits=["random", "popular"],
    )
    # Always "Yes": recall 1, precision = share of yes labels. random: P=.5, F1=2/3; popular: P=.25, F1=.4.
    yes = constant_answer(vlm, single_token(tok, " Yes"))
    metrics, preds = run_benchmark(yes, tok, bench, TEMPLATE, max_new_tokens=2, log=None)
    assert metrics["eval/pope/random/f1"] == pytest.approx(2 / 3)
    assert metrics["eval/pope/random/accuracy"] == pytest.approx(0.5)
    assert metrics["eval/pope/popular/precision"] == pytest.approx(0.25)
    assert metrics["eval/pope/popular/f1"] == pytest.approx(0.4)
    assert metrics["eval/pope"] == pytest.approx((2 / 3 + 0.4) / 2)
    assert metrics["eval/pope/yes_ratio"] == 1.0
    assert [p["answer"] for p in preds] == ["Yes Yes"] * 8
    # Always "No": nothing predicted positive -> precision, recall, F1 0; accuracy = share of no labels.
    no = constant_answer(vlm, single_token(tok, " No"))
    metrics, _ = run_benchmark(no, tok, bench, TEMPLATE, max_new_tokens=1, log=None)
    assert metrics["eval/pope/popular/accuracy"] == pytest.approx(0.75)
    assert metrics["eval/pope/random/f1"] == 0.0
    assert metrics["eval/pope/yes_ratio"] == 0.0


def test_vqa_end_to_end_hand_worked(tiny, tmp_path: Path) -> None:
    vlm, tok = tiny
    solid_png(tmp_path / "img" / "a.png")
    questions = write_jsonl(
        tmp_path / "q.jsonl", [{"question_id": k, "image": "a.png", "text": f"Colour {k}?"} for k in range(3)]
    )
    answers = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"question_id": 0, "answers": ["Red."] * 10},  # normalises to "red": 1
            {"question_id": 1, "answers": ["red"] * 2 + ["blue"] * 8},  # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
            {"question_id": 2, "answers": ["blue"] * 10},  # 0
        ],
    )
    red = constant_answer(vlm, single_token(tok, " red"))
    files = {
        "question_file": str(questions),
        "annotation_file": str(answers),
        "image_root": str(tmp_path / "img"),
    }
    bench = BenchmarkConfig(name="vqav2", kind="vqa", source="files", **files)
    metrics, preds = run_benchmark(red, tok, bench, TEMPLATE, max_new_tokens=1, log=None)
    assert [p["answer"] for p in preds] == ["red"] * 3
    assert [p["score"] for p in preds] == pytest.approx([1.0, 0.6, 0.0])
    assert metrics == {"eval/vqav2": pytest.approx(1.6 / 3)}
    exact = BenchmarkConfig(name="gqa", kind="vqa", source="files", vqa_metric="exact", **files)
    assert run_benchmark(red, tok, exact, TEMPLATE, max_new_tokens=1, log=None)[0] == {
        "eval/gqa": pytest.approx(2 / 3)
    }


def test_mc_end_to_end_hand_worked(tiny, tmp_path: Path) -> None:
    vlm, tok = tiny
    solid_png(tmp_path / "img" / "a.png")
    rows = [
        {
            "question_id": 1,
            "image": "a.png",
            "question": "Which?",
            "options": ["red", "green", "blue", "pink"],
            "answer": "B",
        },
        {
            "question_id": 2,
            "image": "a.png",
            "question": "Which?",
            "options": ["green", "red", "blue", "pink"],
            "answer": "A",
        },
        {
            "question_id": 3,
            "question": "Text only?",
            "options": ["red", "blue", "green circle", "pink"],
            "answer": "B",
        },
        {
            "question_id": 4,
            "question": "Text only?",
            "options": ["red", "blue", "pink", "green"],
            "answer": "C",
        },
    ]
    path = write_jsonl(tmp_path / "mc.jsonl", rows)
    files = {"question_file": str(path), "image_root": str(tmp_path / "img")}
    # Log-likelihood: the option whose single token is the favoured " green" wins (" green circle" pays
    # the length normalisation: (10 - lse - lse) / 2 < 10 - lse, yet still beats the 1-token -lse ones).
    green = constant_answer(vlm, single_token(tok, " green"))
    metrics, preds = run_benchmark(
        green, tok, BenchmarkConfig(name="sqa", kind="mc", source="files", **files), TEMPLATE, log=None
    )
    assert [p["predicted"] for p in preds] == ["B", "A", "C", "D"]
    assert metrics == {"eval/sqa": pytest.approx(0.5)}
    assert preds[2]["lengths"] == [1, 1, 2, 1]
    # Generated letter: always "B".
    letter_b = constant_answer(vlm, single_token(tok, "B"))
    gen = BenchmarkConfig(name="mmb", kind="mc", source="files", mc_mode="generate", **files)
    metrics, preds = run_benchmark(letter_b, tok, gen, TEMPLATE, max_new_tokens=1, log=None)
    assert [p["predicted"] for p in preds] == ["B"] * 4
    assert metrics == {"eval/mmb": pytest.approx(0.5), "eval/mmb/unparsed": 0.0}


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------


def _prompts(tok, gen: torch.Generator) -> list[Prompt]:
    questions = [
        "Is there a red circle in the image?",
        "Colour?",
        "Describe the image briefly and say what is at the top left.",
    ]
    prompts = [
        Prompt(
            generation_prompt_ids(TEMPLATE, q, tok, has_image=True),
            torch.randn(3, 64, 64, generator=gen, dtype=torch.float64),
        )
        for q in questions
    ]
    prompts.append(Prompt(generation_prompt_ids(TEMPLATE, "What is two plus two?", tok, has_image=False)))
    return prompts


@torch.no_grad()
def naive_greedy(vlm, prompt: Prompt, max_new: int, stop_ids) -> list[int]:
    """Full forward pass over the whole sequence at every step, no cache, no padding."""
    batch = {"input_ids": torch.tensor([prompt.input_ids])}
    if prompt.pixel_values is not None:
        batch["pixel_values"] = prompt.pixel_values[None].to(vlm.vision.dtype)
    seq = vlm.splice(batch).inputs_embeds
    table = vlm.llm.get_input_embeddings().weight
    out: list[int] = []
    for _ in range(max_new):
        token = int(vlm.llm(inputs_embeds=seq, use_cache=False).logits[0, -1].argmax())
        if token in stop_ids:
            break
        out.append(token)
        seq = torch.cat([seq, table[token][None, None]], dim=1)
    return out


def test_greedy_batched_equals_single_and_naive_loop(tiny, wild) -> None:
    _, tok = tiny
    gen = torch.Generator().manual_seed(2)
    prompts = _prompts(tok, gen)
    assert len({len(p.input_ids) for p in prompts}) > 1  # left padding really happens
    kw = {"max_new_tokens": 10, "pad_token_id": tok.pad_token_id}
    naive = [naive_greedy(wild, p, 10, [tok.eos_token_id]) for p in prompts]
    batched = greedy_generate(wild, prompts, stop_ids=[tok.eos_token_id], **kw)
    single = [greedy_generate(wild, [p], stop_ids=[tok.eos_token_id], **kw)[0] for p in prompts]
    assert batched == single == naive
    assert len({tuple(x) for x in naive}) > 1 and all(len(x) == 10 for x in naive)
    # Padding a prompt much further on the left (next to a long one) changes nothing.
    long = Prompt(
        prompts[2].input_ids + generation_prompt_ids(TEMPLATE, "x " * 40, tok, has_image=False)[1:],
        prompts[2].pixel_values,
    )
    assert greedy_generate(wild, [prompts[1], long], stop_ids=[tok.eos_token_id], **kw)[0] == naive[1]
    # A stop token cuts its row where the naive loop stops and leaves the other rows alone.
    stop = naive[0][4]
    cut = greedy_generate(wild, prompts, stop_ids=[stop], **kw)
    assert cut == [naive_greedy(wild, p, 10, [stop]) for p in prompts]
    assert cut[0] == naive[0][: naive[0].index(stop)]


@torch.no_grad()
def test_continuation_logliks_equal_unbatched_log_softmax(tiny, wild) -> None:
    _, tok = tiny
    gen = torch.Generator().manual_seed(3)
    prompts = _prompts(tok, gen)
    conts = [answer_ids(TEMPLATE, a, tok) for a in ("red", "a blue square at the top", "no", "four")]
    got = continuation_logliks(wild, prompts, conts, pad_token_id=tok.pad_token_id)
    for (value, count), prompt, cont in zip(got, prompts, conts, strict=True):
        full = Prompt(prompt.input_ids + cont, prompt.pixel_values)
        batch = {"input_ids": torch.tensor([full.input_ids])}
        if full.pixel_values is not None:
            batch["pixel_values"] = full.pixel_values[None]
        logits = wild.llm(inputs_embeds=wild.splice(batch).inputs_embeds, use_cache=False).logits[0]
        logp = F.log_softmax(logits, dim=-1)
        n = logits.shape[0]
        expected = sum(float(logp[n - len(cont) - 1 + j, t]) for j, t in enumerate(cont))
        assert count == len(cont)
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_generation_prompt_matches_training_encoding(tiny) -> None:
    """The prompt is exactly the training sample's ids up to where the answer starts."""
    from core.data.templates import encode_conversation
    from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    _, tok = tiny
    conv = [{"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "red"}]
    encoded = encode_conversation(conv, TEMPLATE, tok)
    first = next(i for i, lab in enumerate(encoded.labels) if lab != IGNORE_INDEX)
    prompt = generation_prompt_ids(TEMPLATE, "What colour is it?\n<image>", tok, has_image=True)
    assert prompt == encoded.input_ids[:first]
    assert prompt.count(IMAGE_TOKEN_INDEX) == 1
    assert encoded.input_ids[first:-1] == answer_ids(TEMPLATE, "red", tok)


# ---------------------------------------------------------------------------------------------------------
# Synthetic evaluation sets
# ---------------------------------------------------------------------------------------------------------


def test_synthetic_sets_round_trip_through_readers(tmp_path: Path) -> None:
    spec = syn.SyntheticEvalSpec(seed=3, num_images=10, num_heldout=12, num_text_questions=20)
    root = syn.generate_eval(spec, tmp_path / "a")
    again = syn.generate_eval(spec, tmp_path / "b")
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        assert f.read_bytes() == (again / f.relative_to(root)).read_bytes(), f
    truth = json.loads((root / syn.HELDOUT_OBJECTS).read_text())["samples"]
    objects = {
        f"eval-{int(k.split('-')[1]):06d}.png": {(o["colour"], o["shape"]) for o in v["objects"]}
        for k, v in truth.items()
    }

    joined = read_pope(root / syn.POPE_ANNOTATION_DIR, root / syn.POPE_QUESTIONS)
    alone = read_pope(root / syn.POPE_ANNOTATION_DIR)
    assert joined == alone
    negatives = {}
    for split, items in joined.items():
        assert sum(i.label == "yes" for i in items) == sum(i.label == "no" for i in items) > 0
        for it in items:
            colour, shape = re.match(r"Is there a (\w+) (\w+) in the image\?", it.text).groups()
            present = objects[it.image.path]
            assert ((colour, shape) in present) == (it.label == "yes")
            if split == "adversarial" and it.label == "no":
                assert any(colour == c or shape == s for c, s in present)  # a near miss
        negatives[split] = [i.text for i in items if i.label == "no"]
    assert negatives["random"] != negatives["popular"] != negatives["adversarial"]

    vqa = read_vqa(root / syn.VQA_QUESTIONS, root / syn.VQA_ANNOTATIONS)
    assert len(vqa) == 20 and all(len(i.answers) == 10 for i in vqa)
    for it in vqa:
        if it.text.startswith("How many"):
            assert {
                a if a.isdigit() else str(["zero", "one", "two", "three"].index(a)) for a in it.answers
            } == {str(len(objects[it.image.path]))}
        else:
            shape = re.match(r"What colour is the (\w+)\?", it.text).group(1)
            (colour,) = [c for c, s in objects[it.image.path] if s == shape]
            assert it.answers.count(colour) >= 8

    mc = read_mc(root / syn.MC_QUESTIONS)
    assert len(mc) == 10
    for it in mc:
        correct = it.options["ABCD".index(it.answer)]
        assert correct in {s for _, s in objects[it.image.path]} and len(set(it.options)) == 4

    text = read_mc(root / syn.TEXT_MC_CSV)
    assert len(text) == 20 and all(i.image is None for i in text)
    for it in text:
        correct = it.options["ABCD".index(it.answer)]
        m = re.match(r"What is (\w+) plus (\w+)\?", it.question)
        if m:
            words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
            assert int(correct) == words.index(m.group(1)) + words.index(m.group(2))

    from core.data import LlavaDataset
    from core.models.tiny_tokenizer import train_tiny_tokenizer

    held = LlavaDataset(
        root / syn.HELDOUT_JSON,
        root / syn.IMAGES_DIR,
        train_tiny_tokenizer(1024, 512),
        "plain",
        image_size=64,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    assert len(held) == 12


def test_eval_images_are_not_training_images() -> None:
    training = {draw_sample(SyntheticSpec(seed=0), i)[0].tobytes() for i in range(64)}
    spec = syn.SyntheticEvalSpec(seed=0).drawing_spec()
    evals = {draw_sample(spec, syn.EVAL_INDEX_OFFSET + i)[0].tobytes() for i in range(64)}
    assert not training & evals


def test_patch_word_labels_hand_worked() -> None:
    image = Image.new("RGB", (128, 128), COLOURS["blue"])
    image.paste(
        COLOURS["red"], (0, 0, 32, 24)
    )  # patches (16 px) rows 0-1 (the second half covered), cols 0-1
    truth = {"background": "blue", "objects": [{"colour": "red", "shape": "square", "bbox": [0, 0, 32, 24]}]}
    words = list(syn.SYNTHETIC_WORDS)
    red, square, blue = words.index("red"), words.index("square"), words.index("blue")
    labels = syn.patch_word_labels(image, truth, (8, 8), words)
    assert labels[0] == labels[1] == [red, square]  # fully red: background 0 < 0.5
    assert labels[8] == labels[9] == [red, blue, square]  # half red, half blue: ties go to the lower index
    assert all(labels[k] == [blue] for k in range(64) if k not in (0, 1, 8, 9))
    stacked = syn.labels_tensor([labels])
    assert stacked.shape == (1, 64, 3) and stacked[0, 0].tolist() == [red, square, -1]


# ---------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------


def test_diagnostics_equal_naive_computation(tiny, small_eval_cfg: EvalConfig) -> None:
    vlm, tok = tiny
    heldout = load_heldout(small_eval_cfg, vlm, tok)
    vlm.train()
    flags = [m.training for m in vlm.modules()]
    got = alignment_diagnostics(vlm, tok, heldout, k=10)
    assert [m.training for m in vlm.modules()] == flags
    vlm.eval()

    with torch.no_grad():
        visual = vlm.encode_images(heldout.pixel_values).double()
    assert torch.allclose(visual, visual_tokens(vlm, heldout.pixel_values).double(), atol=1e-6)
    table = vlm.llm.get_input_embeddings().weight.detach().double()
    # The tiny tokenizer has every synthetic word as one token " word": its label embedding is that row.
    word_rows = table[[single_token(tok, " " + w) for w in heldout.words]]
    tacs_per_image, gaps, hits, labelled = [], [], 0, 0
    for i in range(len(heldout)):
        caption = table[tok(heldout.captions[i], add_special_tokens=False).input_ids]
        best = []
        for x in visual[i]:
            best.append(max(float(torch.dot(x, t) / (x.norm() * t.norm())) for t in caption))
            gaps.append(min(float((x - w).norm()) for w in word_rows))
        tacs_per_image.append(sum(sorted(best, reverse=True)[:10]) / 10)
        for j, x in enumerate(visual[i]):
            labels = {int(v) for v in heldout.label_index[i, j] if v >= 0}
            if labels:
                cos = [float(torch.dot(x, w) / (x.norm() * w.norm())) for w in word_rows]
                labelled += 1
                hits += cos.index(max(cos)) in labels
    assert got["tacs"] == pytest.approx(sum(tacs_per_image) / len(tacs_per_image), abs=1e-5)
    assert got["modality_gap"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-5)
    assert labelled > 0 and got["label_recall"] == pytest.approx(hits / labelled)
    # A word list of its own: labels of words outside it do not count.
    colours_only = alignment_diagnostics(vlm, tok, heldout, list(COLOURS))
    assert set(colours_only) == {"tacs", "modality_gap", "label_recall"}
    assert colours_only["tacs"] == got["tacs"]


def test_probe_logs_curve_points(tiny, small_eval_cfg: EvalConfig, tmp_path: Path) -> None:
    vlm, tok = tiny
    cfg = small_eval_cfg.model_copy(deep=True)
    cfg.diagnostics.every_steps = 2
    probe = DiagnosticsProbe(cfg, vlm, tok, curve_path=tmp_path / "curve.jsonl")
    assert [s for s in range(1, 7) if probe.due(s)] == [2, 4, 6]
    first = probe(vlm, 2)
    assert first == {f"diag/{k}": v for k, v in alignment_diagnostics(vlm, tok, probe.heldout).items()}
    probe(vlm, 4)
    with (tmp_path / "curve.jsonl").open("a") as f:  # a resumed run logs step 4 again: the last value wins
        f.write(json.dumps({"step": 4, "tacs": 0.5}) + "\n")
    assert read_curve(tmp_path / "curve.jsonl") == [(2, first["diag/tacs"]), (4, 0.5)]
    assert read_curve(tmp_path / "missing.jsonl") == []


def test_pca_and_curve_pictures(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    # Points spread along a known direction: the first component recovers it.
    direction = F.normalize(torch.randn(16, generator=gen, dtype=torch.float64), dim=0)
    t = torch.linspace(-5, 5, 50, dtype=torch.float64)
    points = t[:, None] * direction + 0.01 * torch.randn(50, 16, generator=gen, dtype=torch.float64)
    xy = pca_2d(points)
    assert abs(float(torch.corrcoef(torch.stack([xy[:, 0], t]))[0, 1])) > 0.999
    assert torch.allclose(pca_2d(points.repeat(3, 1))[:50], xy, atol=1e-8)  # Gram and covariance paths agree
    path = curve_picture([(10, 0.2), (0, 0.1), (20, 0.3)], tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="no"):
        curve_picture([], tmp_path / "d.png")


# ---------------------------------------------------------------------------------------------------------
# evaluate()
# ---------------------------------------------------------------------------------------------------------


def test_evaluate_writes_files_and_returns_named_metrics(
    tiny, small_eval_cfg: EvalConfig, tmp_path: Path
) -> None:
    vlm, tok = tiny
    out = tmp_path / "final"
    metrics = evaluate(
        vlm,
        tok,
        small_eval_cfg,
        llm_id="tiny-llama",
        stage="stage2",
        out_dir=out,
        tacs_curve=[(0, 0.1), (5, 0.2)],
        log=None,
    )
    for name in ("pope", "vqa", "mmbench", "sqa", "mmlu"):
        assert 0.0 <= metrics[f"eval/{name}"] <= 1.0
        lines = (out / "predictions" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == (12 if name == "pope" else 4)
    assert {"eval/pope/adversarial/f1", "eval/pope/yes_ratio", "eval/mmbench/unparsed"} <= set(metrics)
    assert {
        "diag/tacs/after_stage2",
        "diag/modality_gap/after_stage2",
        "diag/label_recall/after_stage2",
    } <= set(metrics)
    f1 = [metrics[f"eval/pope/{s}/f1"] for s in ("adversarial", "popular", "random")]
    assert metrics["eval/pope"] == pytest.approx(sum(f1) / 3)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"] == pytest.approx(metrics) and summary["template"] == TEMPLATE
    assert summary["counts"]["pope"] == 12
    for picture in ("patch_words.png", "pca.png", "tacs_curve.png"):
        data = (out / picture).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        with Image.open(out / picture) as im:
            im.verify()

    # After a stage 1 that is not the last: only text_mc runs (language retention), named before_stage2.
    early = evaluate(
        vlm,
        tok,
        small_eval_cfg,
        llm_id="tiny-llama",
        stage="stage1",
        out_dir=tmp_path / "s1",
        final=False,
        log=None,
    )
    assert set(early) == {"eval/mmlu/before_stage2", "diag/tacs", "diag/modality_gap", "diag/label_recall"}
    # The LLM is the same, so the text-only score after "stage 1" equals the final one.
    assert early["eval/mmlu/before_stage2"] == metrics["eval/mmlu"]
    assert sorted(p.name for p in (tmp_path / "s1" / "predictions").iterdir()) == ["mmlu.jsonl"]
    assert (
        evaluate(vlm, tok, EvalConfig(), llm_id="tiny-llama", stage="stage1", out_dir=tmp_path / "off") == {}
    )
    assert not (tmp_path / "off").exists()


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------


def _error(data: dict, model=EvalConfig) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


def test_invalid_config_names_the_field() -> None:
    msg = _error({"benchmarks": [{"name": "pope", "kind": "pope", "source": "files"}]})
    assert "annotation_dir" in msg and "image_root" in msg and "benchmarks.0" in msg
    msg = _error({"benchmarks": [{"name": "v", "kind": "vqa", "source": "files", "question_file": "q"}]})
    assert "annotation_file" in msg and "question_file" not in msg.split("needs")[1].split(";")[0]
    assert "image_root" in _error({"benchmarks": [{"name": "p", "kind": "pope", "image_root": "/x"}]})
    assert "annotation_dir" in _error(
        {
            "benchmarks": [
                {
                    "name": "m",
                    "kind": "text_mc",
                    "source": "files",
                    "question_file": "q",
                    "annotation_dir": "d",
                }
            ]
        }
    )
    assert "{question}" in _error({"benchmarks": [{"name": "m", "kind": "mc", "prompt": "no placeholder"}]})
    assert "repeat" in _error({"benchmarks": [{"name": "a", "kind": "mc"}, {"name": "a", "kind": "vqa"}]})
    assert "bogus" in _error({"diagnostics": {"bogus": 1}})
    assert "json_path" in _error({"diagnostics": {"source": "files", "image_root": "/x"}})
    assert "kind" in _error({"benchmarks": [{"name": "a", "kind": "ocr"}]})
    cfg = EvalConfig()
    with pytest.raises(ValidationError, match="batch_size"):
        cfg.batch_size = 0


def test_identity_leaves_out_paths_and_speed() -> None:
    from core.config.identity import identity_dict

    cfg = EvalConfig.model_validate(
        {
            "enabled": True,
            "batch_size": 32,
            "benchmarks": [
                {
                    "name": "v",
                    "kind": "vqa",
                    "source": "files",
                    "question_file": "q",
                    "annotation_file": "a",
                    "image_root": "r",
                }
            ],
        }
    )
    ident = identity_dict(cfg)
    assert "batch_size" not in ident
    bench = ident["benchmarks"][0]
    assert not {"question_file", "annotation_file", "image_root", "splits", "mc_mode"} & set(bench)
    assert bench["vqa_metric"] == "vqa"
    assert BenchmarkConfig(name="m", kind="text_mc").runs_after("stage1", final=False)
    assert not BenchmarkConfig(name="p", kind="pope").runs_after("stage1", final=False)
    assert BenchmarkConfig(name="p", kind="pope", when=["after_stage1"]).runs_after("stage1", final=False)


def test_vqa_reader_takes_gqa_native_answers(tmp_path: Path) -> None:
    """GQA's testdev_balanced_questions.json is a dict keyed by question id; LLaVA's question jsonl joins it."""
    questions = tmp_path / "llava_gqa_testdev_balanced.jsonl"
    questions.write_text(
        '{"question_id": "201307251", "image": "n1.jpg", "text": "Is it a cat?"}\n'
        '{"question_id": "20515405", "image": "n2.jpg", "text": "What colour is the car?"}\n'
    )
    answers = tmp_path / "testdev_balanced_questions.json"
    answers.write_text(
        json.dumps(
            {
                "20515405": {"answer": "red", "question": "What colour is the car?"},
                "201307251": {"answer": "no", "imageId": "n1"},
            }
        )
    )
    items = read_vqa(questions, answers)
    assert [(i.question_id, i.answers) for i in items] == [("201307251", ("no",)), ("20515405", ("red",))]
