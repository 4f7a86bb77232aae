"""VQAv2 / VizWiz scorers against hand-computed official accuracies, read from real files, and the answer files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.evaluation.scorers import vqa
from core.evaluation.scorers.common import ScorerInputError


def _loo(pred: str, refs: list[str]) -> float:
    # The rule text: for each of the n references, leave it out and take min(1, matches among the rest / 3).
    accs = []
    for i in range(len(refs)):
        rest = refs[:i] + refs[i + 1 :]
        accs.append(min(1.0, sum(r == pred for r in rest) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),
        ("Yes!", "yes"),
        ("The cat's toy", "cat 's toy"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("none", "0"),
        ("3.5", "3.5"),
        ("an apple?", "apple"),
        ("red/white", "red white"),
        ("x-ray", "x ray"),
    ],
)
def test_evalai_answer_processing(raw: str, expected: str) -> None:
    assert vqa.evalai_answer(raw) == expected


def test_vqav2_accuracy_hand_values() -> None:
    # 2 of 10 say yes: the 2 "yes" subsets see 1 match (1/3), the 8 others see 2 (2/3) -> 0.6.
    assert vqa.vqav2_accuracy("Yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert vqa.vqav2_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    assert vqa.vqav2_accuracy("yes", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)
    assert vqa.vqav2_accuracy("maybe", ["yes"] * 4 + ["no"] * 6) == 0.0
    # Different references -> both sides normalised: "two" matches "2".
    assert vqa.vqav2_accuracy("2", ["two"] * 5 + ["three"] * 5) == pytest.approx(1.0)


def test_vqav2_identical_references_are_not_normalised() -> None:
    # The official evaluator normalises only when the references differ: ten identical raw "Two" never
    # equal the processed prediction "2"; ten "2" do.
    assert vqa.vqav2_accuracy("two", ["Two"] * 10) == 0.0
    assert vqa.vqav2_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa.vqav2_accuracy("Two", ["2 "] * 10) == 1.0  # references are still stripped


def _write_vqav2(tmp: Path) -> dict[str, Path]:
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"question_id": 1, "image_id": 42, "question": "How many dogs?"},
            {"question_id": 2, "image_id": 43, "question": "Is it raining?"},
        ],
    }
    annotations = {
        "annotations": [
            {
                "question_id": 1,
                "answer_type": "number",
                "answers": [{"answer": a} for a in ["2"] * 6 + ["two"] * 4],
            },
            {
                "question_id": 2,
                "answer_type": "yes/no",
                "answers": [{"answer": a} for a in ["yes"] * 2 + ["no"] * 8],
            },
        ]
    }
    (tmp / "q.json").write_text(json.dumps(questions))
    (tmp / "a.json").write_text(json.dumps(annotations))
    (tmp / "val2014").mkdir()
    return {"questions": tmp / "q.json", "annotations": tmp / "a.json", "images": tmp / "val2014"}


def test_vqav2_read_score_and_prompt(tmp_path: Path) -> None:
    samples = vqa.read_vqav2(_write_vqav2(tmp_path))
    assert [s.id for s in samples] == ["1", "2"]
    assert samples[0].image == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"
    assert (
        vqa.prompt_vqav2(samples[0]) == "How many dogs?\nAnswer the question using a single word or phrase."
    )
    metrics = vqa.score_vqav2(samples, {"1": "Two.", "2": "Yes"})
    norm_refs_1 = ["2"] * 10  # "two" -> "2" since the references differ
    expected_1 = _loo("2", norm_refs_1)
    expected_2 = _loo("yes", ["yes"] * 2 + ["no"] * 8)
    assert metrics[vqa.ACCURACY] == pytest.approx((expected_1 + expected_2) / 2)
    assert metrics[f"{vqa.ANSWER_TYPE_PREFIX}number"] == pytest.approx(1.0)
    assert metrics[f"{vqa.ANSWER_TYPE_PREFIX}yes/no"] == pytest.approx(0.6)


def test_vqav2_missing_prediction_names_the_question(tmp_path: Path) -> None:
    samples = vqa.read_vqav2(_write_vqav2(tmp_path))
    with pytest.raises(ScorerInputError, match="first: 2"):
        vqa.score_vqav2(samples, {"1": "2"})


def test_vqav2_test_dev_submission(tmp_path: Path) -> None:
    questions = {
        "data_subtype": "test-dev2015",
        "questions": [
            {"question_id": 7, "image_id": 5, "question": "What color?"},
            {"question_id": 8, "image_id": 6, "question": "Who?"},
        ],
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "test2015").mkdir()
    samples = vqa.read_vqav2({"questions": tmp_path / "q.json", "images": tmp_path / "test2015"})
    assert samples[0].answers == () and samples[0].image.name == "COCO_test2015_000000000005.jpg"
    out = vqa.write_vqav2_submission(samples, {"7": "The Red."}, tmp_path / "up" / "answers.json")
    assert json.loads(out.read_text()) == [
        {"question_id": 7, "answer": "red"},
        {"question_id": 8, "answer": ""},
    ]


def _write_vizwiz(tmp: Path) -> dict[str, Path]:
    data = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "What is this?",
            "answer_type": "other",
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in ["a can"] * 3 + ["soda"] * 7],
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "What does it say?",
            "answer_type": "unanswerable",
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
        },
    ]
    (tmp / "val.json").write_text(json.dumps(data))
    (tmp / "val").mkdir()
    return {"annotations": tmp / "val.json", "images": tmp / "val"}


def test_vizwiz_read_score_prompt_and_submission(tmp_path: Path) -> None:
    samples = vqa.read_vizwiz(_write_vizwiz(tmp_path))
    assert samples[0].id == "VizWiz_val_00000000.jpg"
    assert vqa.prompt_vizwiz(samples[0]) == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase."
    )
    # "A can." -> "can" (article and period go); references "a can" -> "can" too: 3 matches -> 0.9 by LOO.
    metrics = vqa.score_vizwiz(samples, {samples[0].id: "A can.", samples[1].id: "Unanswerable"})
    assert metrics[vqa.ACCURACY] == pytest.approx((_loo("can", ["can"] * 3 + ["soda"] * 7) + 1.0) / 2)
    assert metrics[f"{vqa.ANSWER_TYPE_PREFIX}unanswerable"] == 1.0
    out = vqa.write_vizwiz_submission(samples, {s.id: "Unanswerable" for s in samples}, tmp_path / "sub.json")
    assert json.loads(out.read_text())[1] == {"image": "VizWiz_val_00000001.jpg", "answer": "unanswerable"}


def test_vizwiz_missing_file_names_role_and_source(tmp_path: Path) -> None:
    with pytest.raises(ScorerInputError, match=r"annotations file not found.*vizwiz.org"):
        vqa.read_vizwiz({"annotations": tmp_path / "nope.json", "images": tmp_path})


@pytest.mark.parametrize("content", [[], {"questions": []}])
def test_vizwiz_annotations_must_be_a_non_empty_list(tmp_path: Path, content: object) -> None:
    paths = _write_vizwiz(tmp_path)
    paths["annotations"].write_text(json.dumps(content))
    with pytest.raises(ScorerInputError, match=r"val.json: expected a non-empty JSON list of questions"):
        vqa.read_vizwiz(paths)
