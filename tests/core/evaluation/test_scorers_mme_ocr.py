"""MME (acc, acc+, score, totals) and OCRBench (containment, handwritten maths) against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.evaluation.scorers import mme, ocrbench
from core.evaluation.scorers.common import ScorerInputError


def _subtask(root: Path, name: str, images: dict[str, tuple[str, str]], nested: bool) -> None:
    folder = root / name
    img_dir = folder / "images" if nested else folder
    txt_dir = folder / "questions_answers_YN" if nested else folder
    img_dir.mkdir(parents=True)
    txt_dir.mkdir(parents=True, exist_ok=True)
    for stem, (q_yes, q_no) in images.items():
        (img_dir / f"{stem}.jpg").write_bytes(b"jpg")
        (txt_dir / f"{stem}.txt").write_text(
            f"{q_yes} Please answer yes or no.\tYes\n{q_no} Please answer yes or no.\tNo\n"
        )


def _mme_root(tmp: Path) -> Path:
    root = tmp / "MME_Benchmark_release_version"
    _subtask(
        root, "existence", {"e1": ("Is there a dog?", "Is there a cat?"), "e2": ("A car?", "A bus?")}, False
    )
    _subtask(root, "artwork", {"a1": ("Is it by Monet?", "Is it by Dali?")}, True)
    _subtask(root, "code_reasoning", {"c1": ("Prints 3?", "Prints 4?")}, False)
    return root


def test_mme_acc_acc_plus_and_totals(tmp_path: Path) -> None:
    samples = mme.read({"root": _mme_root(tmp_path)})
    assert len(samples) == 8
    assert mme.prompt(samples[0]) == "Is there a dog?\nAnswer the question using a single word or phrase."
    double_space = mme.MmeSample("x", "OCR", Path("i.jpg"), "Is it 'OK'?  Please answer yes or no.", "yes")
    assert mme.prompt(double_space) == "Is it 'OK'?\nAnswer the question using a single word or phrase."
    by_q = {s.id: s for s in samples}
    preds = {
        # existence: e1 both right, e2 one of two wrong -> acc 3/4 = 75, acc+ 1/2 = 50, score 125
        "existence/e1.jpg/0": "Yes, there is a dog.",
        "existence/e1.jpg/1": "No",
        "existence/e2.jpg/0": "Yes",
        "existence/e2.jpg/1": "Yes",
        # artwork: both right -> 100 + 100 = 200 (nested layout)
        "artwork/a1.jpg/0": "yes",
        "artwork/a1.jpg/1": "NO.",
        # code_reasoning: "There is no" -> first 4 chars "ther" -> other -> wrong; other one right -> 50 + 0
        "code_reasoning/c1.jpg/0": "Yes",
        "code_reasoning/c1.jpg/1": "There is no such output",
    }
    assert set(preds) == set(by_q)
    m = mme.score(samples, preds)
    assert m[f"{mme.SUBTASK_PREFIX}existence/{mme.ACC}"] == 75.0
    assert m[f"{mme.SUBTASK_PREFIX}existence/{mme.ACC_PLUS}"] == 50.0
    assert m[f"{mme.SUBTASK_PREFIX}existence/{mme.SCORE}"] == 125.0
    assert m[f"{mme.SUBTASK_PREFIX}artwork/{mme.SCORE}"] == 200.0
    assert m[f"{mme.SUBTASK_PREFIX}code_reasoning/{mme.SCORE}"] == 50.0
    assert m[mme.PERCEPTION] == 325.0
    assert m[mme.COGNITION] == 50.0
    assert m[mme.TOTAL] == 375.0


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes.", "yes"),
        ("Nope", "no"),
        ("The answer is yes", "other"),
        ("y", "other"),
    ],
)
def test_mme_yes_no_parsing(text: str, label: str) -> None:
    assert mme.parse_yes_no(text) == label


def test_mme_bad_line_is_reported(tmp_path: Path) -> None:
    root = _mme_root(tmp_path)
    (root / "existence" / "e1.txt").write_text("Is there a dog?\tMaybe\n")
    with pytest.raises(ScorerInputError, match=r"e1.txt:1: expected 'question<TAB>Yes\|No'"):
        mme.read({"root": root})


def _ocr_files(tmp: Path) -> dict[str, Path]:
    data = [
        {
            "dataset_name": "IIIT5K",
            "id": 0,
            "image_path": "IIIT5K/1.png",
            "question": "what is written in the image?",
            "answers": ["Coffee"],
            "type": "Regular Text Recognition",
        },
        {
            "dataset_name": "docVQA",
            "id": 1,
            "image_path": "docVQA/2.png",
            "question": "What is the date?",
            "answers": ["March 3", "3 March"],
            "type": "Doc-oriented VQA",
        },
        {
            "dataset_name": "HME100k",
            "id": 2,
            "image_path": "HME100k/3.jpg",
            "question": "Please write out the expression of the formula in the image using LaTeX format.",
            "answers": "x ^ { 2 } + \\frac { 1 } { 2 }",
            "type": "Handwritten Mathematical Expression Recognition",
        },
        {
            "dataset_name": "HME100k",
            "id": 3,
            "image_path": "HME100k/4.jpg",
            "question": "Please write out the expression of the formula in the image using LaTeX format.",
            "answers": "A + B",
            "type": "Handwritten Mathematical Expression Recognition",
        },
    ]
    (tmp / "OCRBench.json").write_text(json.dumps(data))
    (tmp / "OCRBench_Images").mkdir()
    return {"annotations": tmp / "OCRBench.json", "images": tmp / "OCRBench_Images"}


def test_ocrbench_containment_and_handwritten_maths(tmp_path: Path) -> None:
    samples = ocrbench.read(_ocr_files(tmp_path))
    assert samples[2].answers == ("x ^ { 2 } + \\frac { 1 } { 2 }",)
    assert ocrbench.prompt(samples[0]) == "what is written in the image?"
    preds = {
        "0": "The word is COFFEE.",  # case-insensitive containment
        "1": "It was on 3\nMarch",  # newline -> space, then "3 march" is contained
        "2": "$x^{2}+\\frac{1}{2}$",  # maths: spaces removed on both sides
        "3": "a+b",  # maths keeps case: "A+B" is not in "a+b"
    }
    m = ocrbench.score(samples, preds)
    assert m[ocrbench.SCORE] == 3.0
    assert m[ocrbench.ACCURACY] == 0.75
    assert m[ocrbench.TEXT_RECOGNITION] == 1.0
    assert m[f"{ocrbench.TYPE_PREFIX}Handwritten Mathematical Expression Recognition"] == 1.0
    # The same maths answer outside HME100k is not whitespace-insensitive.
    assert not ocrbench.is_correct("x^{2}", ["x ^ { 2 }"], "docVQA")
    assert ocrbench.is_correct("x^{2}", ["x ^ { 2 }"], "HME100k")


@pytest.mark.parametrize("content", [[], {"0": {}}])
def test_ocrbench_annotations_must_be_a_non_empty_list(tmp_path: Path, content: object) -> None:
    paths = _ocr_files(tmp_path)
    paths["annotations"].write_text(json.dumps(content))
    with pytest.raises(ScorerInputError, match=r"OCRBench.json: expected a non-empty JSON list$"):
        ocrbench.read(paths)
