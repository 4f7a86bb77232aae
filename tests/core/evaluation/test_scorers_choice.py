"""MMBench (CircularEval), MMVP, SEED-Bench and MMMU scorers against independent computations of their rules."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

import polars as pl
import pytest
from openpyxl import load_workbook
from PIL import Image

from core.evaluation.scorers import mmbench, mmmu, mmvp, scienceqa, seedbench
from core.evaluation.scorers.common import ScorerInputError


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


MMB_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]


def _write_tsv(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(MMB_HEADER)
        w.writerows(rows)
    return path


def _mmb_rows() -> list[list[object]]:
    img = _png_b64()
    return [
        [
            0,
            "What colour?",
            "Look closely.",
            "red",
            "green",
            "blue",
            "black",
            "A",
            "color",
            "perception",
            img,
        ],
        [1, "Which shape?", "nan", "circle", "square", "triangle", "", "C", "shape", "perception", img],
    ]


def test_mmbench_expands_rotations_with_moving_gold(tmp_path: Path) -> None:
    samples = mmbench.read({"tsv": _write_tsv(tmp_path / "dev.tsv", _mmb_rows())})
    assert len(samples) == 4 + 3
    q1 = [s for s in samples if s.group == 1]
    # Independent rotation: pass r shows options[r:] + options[:r]; gold = the letter where "triangle" sits.
    options = ["circle", "square", "triangle"]
    for r, s in enumerate(q1):
        shown = options[r:] + options[:r]
        assert list(s.options) == shown
        assert s.answer == "ABC"[shown.index("triangle")]
        assert s.index == 1 + r * 1_000_000
    assert mmbench.prompt(samples[0]) == (
        "Look closely.\nWhat colour?\nA. red\nB. green\nC. blue\nD. black\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert mmbench.prompt(q1[0]).startswith("Which shape?\nA. circle")  # "nan" hint dropped


def test_mmbench_cn_prompt(tmp_path: Path) -> None:
    samples = mmbench.read_cn({"tsv": _write_tsv(tmp_path / "cn.tsv", _mmb_rows())})
    assert mmbench.prompt(samples[0]).endswith("\n请直接回答选项字母。")


def test_mmbench_circular_eval_fails_a_question_on_one_wrong_pass(tmp_path: Path) -> None:
    samples = mmbench.read({"tsv": _write_tsv(tmp_path / "dev.tsv", _mmb_rows())})
    preds = {s.id: f"{s.answer}." for s in samples}  # every pass right ...
    q1 = [s for s in samples if s.group == 1]
    wrong = next(c for c in "ABC" if c != q1[2].answer)
    preds[q1[2].id] = f"The answer is {wrong}"  # ... except one rotation of question 1
    metrics = mmbench.score(samples, preds)
    assert metrics[mmbench.OVERALL] == 0.5
    assert metrics[f"{mmbench.CATEGORY_PREFIX}color"] == 1.0
    assert metrics[f"{mmbench.CATEGORY_PREFIX}shape"] == 0.0
    assert metrics[f"{mmbench.L2_PREFIX}perception"] == 0.5
    # Row-by-row accuracy would be 6/7; CircularEval is strictly per question.
    all_right = mmbench.score(samples, {s.id: s.answer for s in samples})
    assert all_right[mmbench.OVERALL] == 1.0


def test_mmbench_legacy_file_with_circular_copies_is_not_rotated_again(tmp_path: Path) -> None:
    img = _png_b64()
    rows = [
        [5, "Q?", "", "x", "y", "", "", "A", "c", "l2", img],
        [1_000_005, "Q?", "", "y", "x", "", "", "B", "c", "l2", img],
    ]
    samples = mmbench.read({"tsv": _write_tsv(tmp_path / "legacy.tsv", rows)})
    assert [s.id for s in samples] == ["5", "1000005"] and {s.group for s in samples} == {5}
    assert mmbench.score(samples, {"5": "A", "1000005": "A"})[mmbench.OVERALL] == 0.0
    assert mmbench.score(samples, {"5": "A", "1000005": "B"})[mmbench.OVERALL] == 1.0


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("(C) blue", "C"),
        ("The answer is D.", "D"),
        ("A or B", None),  # two letters, and no single option text either
        ("It is green", "B"),  # no letter: the only option text found
        ("red or green", None),
        ("Cannot determine the answer", None),
        ("Z", None),
    ],
)
def test_mmbench_option_matching(answer: str, expected: str | None) -> None:
    assert mmbench.infer_option(answer, ["red", "green", "blue", "black"]) == expected


def test_mmbench_submission_xlsx(tmp_path: Path) -> None:
    samples = mmbench.read({"tsv": _write_tsv(tmp_path / "test.tsv", _mmb_rows())})
    out = mmbench.write_submission(samples, {s.id: "A" for s in samples}, tmp_path / "up" / "sub.xlsx")
    rows = list(load_workbook(out).active.iter_rows(values_only=True))
    assert rows[0] == ("index", "question", "A", "B", "C", "D", "prediction")
    assert rows[1] == (0, "What colour?", "red", "green", "blue", "black", "A")
    assert rows[-1][0] == 1 + 2 * 1_000_000 and rows[-1][2:5] == ("triangle", "circle", "square")
    assert len(rows) == 1 + 7


def test_mmbench_bad_answer_is_reported(tmp_path: Path) -> None:
    rows = _mmb_rows()
    rows[1][7] = "D"  # question 1 has three options
    with pytest.raises(ScorerInputError, match=r"dev.tsv:3: answer 'D'"):
        mmbench.read({"tsv": _write_tsv(tmp_path / "dev.tsv", rows)})


# --------------------------------------------------------------------------------------------------------
# MMVP
# --------------------------------------------------------------------------------------------------------


def _write_mmvp(tmp: Path) -> dict[str, Path]:
    rows = [
        ("1", "Is the door open?", "(a) Open (b) Closed", "(a)"),
        ("2", "Is the door open?", "(a) Open (b) Closed", "(b)"),
        ("3", "Which way is the dog facing?", "(a) Left (b) Right", "(b)"),
        ("4", "Which way is the dog facing?", "(a) Left (b) Right", "(a)"),
    ]
    with (tmp / "Questions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Index", "Question", "Options", "Correct Answer"])
        w.writerows(rows)
    (tmp / "MMVP Images").mkdir()
    return {"questions": tmp / "Questions.csv", "images": tmp / "MMVP Images"}


def test_mmvp_pair_accuracy(tmp_path: Path) -> None:
    samples = mmvp.read(_write_mmvp(tmp_path))
    assert samples[0].options == ("Open", "Closed") and samples[1].answer == "B"
    assert samples[2].image == tmp_path / "MMVP Images" / "3.jpg"
    assert mmvp.prompt(samples[0]) == (
        "Is the door open?\nA. Open\nB. Closed\nAnswer with the option's letter from the given choices directly."
    )
    preds = {"1": "A", "2": "(b) Closed", "3": "The answer is B", "4": "B."}
    metrics = mmvp.score(samples, preds)
    # Pair 1 both right, pair 2 one wrong: 1/2 pairs, 3/4 questions.
    assert metrics == {mmvp.PAIR_ACCURACY: 0.5, mmvp.QUESTION_ACCURACY: 0.75}


@pytest.mark.parametrize(
    ("text", "letter"),
    [("A", "A"), ("(b)", "B"), ("b. closed", "B"), ("I think the option B fits", "B"), ("Closed", None)],
)
def test_mmvp_letter_extraction(text: str, letter: str | None) -> None:
    assert mmvp.extract_letter(text) == letter


def test_mmvp_incomplete_pair_is_an_error(tmp_path: Path) -> None:
    samples = mmvp.read(_write_mmvp(tmp_path))[:3]
    with pytest.raises(ScorerInputError, match="exactly two questions"):
        mmvp.score(samples, {s.id: "A" for s in samples})


# --------------------------------------------------------------------------------------------------------
# SEED-Bench
# --------------------------------------------------------------------------------------------------------


def _write_seed(tmp: Path) -> dict[str, Path]:
    def q(qid: str, kind: str, answer: str, qtype: int) -> dict[str, object]:
        return {
            "question_id": qid,
            "question": f"question {qid}?",
            "choice_a": "cat",
            "choice_b": "dog",
            "choice_c": "cow",
            "choice_d": "pig",
            "answer": answer,
            "data_type": kind,
            "data_id": f"{qid}.jpg",
            "question_type_id": qtype,
        }

    data = {
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
        "questions": [
            q("1", "image", "A", 1),
            q("2", "image", "B", 1),
            q("3", "image", "C", 2),
            q("v1", "video", "D", 2),
        ],
    }
    (tmp / "SEED-Bench.json").write_text(json.dumps(data))
    (tmp / "SEED-Bench-image").mkdir()
    return {"annotations": tmp / "SEED-Bench.json", "images": tmp / "SEED-Bench-image"}


def test_seedbench_first_character_rule(tmp_path: Path) -> None:
    paths = _write_seed(tmp_path)
    samples = seedbench.read(paths)
    assert [s.id for s in samples] == ["1", "2", "3"]  # the video question needs its frames folder
    assert seedbench.prompt(samples[0]) == (
        "question 1?\nA. cat\nB. dog\nC. cow\nD. pig\nAnswer with the option's letter from the given choices directly."
    )
    preds = {"1": " A. cat", "2": "The answer is B", "3": "C\n"}
    # LLaVA: the stripped answer must be the letter: only question 3 is right.
    llava = seedbench.score(samples, preds)
    assert llava[seedbench.ALL] == pytest.approx(1 / 3) and llava[seedbench.IMAGE] == pytest.approx(1 / 3)
    assert llava[f"{seedbench.QUESTION_TYPE_PREFIX}Scene Understanding"] == 0.0
    assert llava[f"{seedbench.QUESTION_TYPE_PREFIX}Instance Identity"] == 1.0
    # lmms-eval: the first character: "A. cat" is A, "The answer is B" is "T".
    lmms = seedbench.score(samples, preds, first_character=True)
    assert lmms[seedbench.ALL] == pytest.approx(2 / 3)
    assert lmms[f"{seedbench.QUESTION_TYPE_PREFIX}Scene Understanding"] == 0.5
    (tmp_path / "frames").mkdir()
    with_video = seedbench.read({**paths, "video_frames": tmp_path / "frames"})
    assert with_video[-1].image == tmp_path / "frames" / "v1.png"
    assert seedbench.score(with_video, {"1": "A", "2": "B", "3": "C", "v1": "A"})[seedbench.VIDEO] == 0.0


# --------------------------------------------------------------------------------------------------------
# MMMU
# --------------------------------------------------------------------------------------------------------

OPTS = ["apple", "banana", "cherry pie", "durian"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("(B)", "B"),
        ("The answer is C.", "C"),
        ("(A) is wrong, so (D)", "D"),  # several bracketed: the last one
        ("A and then D are options", "D"),  # several " X ": the last one
        ("I would definitely pick the cherry pie here", "C"),  # > 5 words: option text
        ("B.", "B"),  # trailing '.' stripped
    ],
)
def test_mmmu_parse_order(response: str, expected: str) -> None:
    assert mmmu.parse_choice(response, OPTS, random.Random(0)) == expected


def test_mmmu_fallback_is_seeded_and_order_free() -> None:
    samples = [
        mmmu.MmmuSample(f"validation_Art_{i}", "Art", "q", tuple(OPTS), "A", mmmu.MULTIPLE_CHOICE, ())
        for i in range(40)
    ]
    preds = {s.id: "no idea" for s in samples}  # nothing parses: random choice
    # Independent computation of the documented fallback: one generator per question seeded "seed:id".
    expected = sum(random.Random(f"7:{s.id}").choice("ABCD") == "A" for s in samples) / len(samples)
    first = mmmu.score(samples, preds, seed=7)
    assert first[mmmu.ACCURACY] == pytest.approx(expected)
    assert mmmu.score(list(reversed(samples)), preds, seed=7)[mmmu.ACCURACY] == pytest.approx(expected)
    assert 0 < expected < 1


def test_mmmu_open_questions() -> None:
    # "final ", "answer ", "is " all match; the shortest tail "3.14159" -> 3.14 (its number is the same).
    assert mmmu.parse_open("The final answer is 3.14159") == [3.14]
    assert 3.14 in mmmu.parse_open("so the result is 3.14159")
    assert mmmu.open_correct("3.14", mmmu.parse_open("so the result is 3.14159"))
    assert mmmu.open_correct(["1,000", "one thousand"], mmmu.parse_open("It is 1000"))
    assert not mmmu.open_correct("a", mmmu.parse_open("banana"))  # one character only as a word
    assert mmmu.open_correct("a", mmmu.parse_open("the answer is a "))


def test_mmmu_read_parquet_and_score(tmp_path: Path) -> None:
    png = base64.b64decode(_png_b64())
    rows = {
        "id": ["validation_Art_1", "validation_Math_1", "validation_Math_2"],
        "question": ["<image 1> Which fruit?", "Compute <image 1>", "Pick"],
        "options": [str(OPTS), "[]", str(OPTS)],
        "answer": ["B", "['42', '42.0']", "D"],
        "question_type": ["multiple-choice", "open", "multiple-choice"],
        "image_1": [{"bytes": png, "path": "a.png"}] * 3,
        "image_2": [None, None, None],
    }
    (tmp_path / "Art").mkdir()
    pl.DataFrame(rows).write_parquet(tmp_path / "Art" / "validation-00000-of-00001.parquet")
    samples = mmmu.read({"root": tmp_path})
    assert samples[1].answer == ("42", "42.0") and samples[0].images == (png,)
    assert mmmu.prompt(samples[0]) == (
        "<image 1> Which fruit?\nA. apple\nB. banana\nC. cherry pie\nD. durian\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    metrics = mmmu.score(
        samples, {"validation_Art_1": "B", "validation_Math_1": "x = 42", "validation_Math_2": "(A)"}
    )
    assert metrics[mmmu.ACCURACY] == pytest.approx(2 / 3)
    assert metrics[f"{mmmu.SUBJECT_PREFIX}Math"] == 0.5
    assert metrics[f"{mmmu.DOMAIN_PREFIX}Art and Design"] == 1.0
    assert metrics[f"{mmmu.DOMAIN_PREFIX}Science"] == 0.5


# --------------------------------------------------------------------------------------------------------
# ScienceQA
# --------------------------------------------------------------------------------------------------------


def _write_sqa(tmp: Path) -> dict[str, Path]:
    problems = {
        "10": {
            "question": "Which is a mammal?",
            "choices": ["frog", "whale"],
            "answer": 1,
            "hint": "",
            "image": "image.png",
        },
        "11": {
            "question": "Pick  one.",
            "choices": ["x", "y", "z"],
            "answer": 2,
            "hint": "A hint.",
            "image": None,
        },
        "12": {
            "question": "Which is hot?",
            "choices": ["ice", "fire", "snow"],
            "answer": 1,
            "hint": "",
            "image": "image.png",
        },
        "99": {"question": "train only", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None},
    }
    (tmp / "problems.json").write_text(json.dumps(problems))
    (tmp / "pid_splits.json").write_text(json.dumps({"test": ["10", "11", "12"], "train": ["99"]}))
    (tmp / "images").mkdir()
    return {"problems": tmp / "problems.json", "splits": tmp / "pid_splits.json", "images": tmp / "images"}


def test_scienceqa_prompt_parsing_and_img_accuracy(tmp_path: Path) -> None:
    samples = scienceqa.read(_write_sqa(tmp_path))
    assert [s.id for s in samples] == ["10", "11", "12"] and samples[1].image is None
    assert samples[0].image == tmp_path / "images" / "10" / "image.png"
    assert scienceqa.prompt(samples[0]) == (
        "Context: N/A\nWhich is a mammal?\nA. frog\nB. whale\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert scienceqa.prompt(samples[1]).startswith("Context: A hint.\nPick one.\nA. x")  # double space folded
    metrics = scienceqa.score(samples, {"10": "B", "11": "The answer is C", "12": "C. snow"})
    assert metrics == {scienceqa.ACCURACY: pytest.approx(2 / 3), scienceqa.IMG_ACCURACY: 0.5}


@pytest.mark.parametrize(
    ("text", "n", "letter"),
    [
        ("B", 3, "B"),
        (" C ", 3, "C"),
        ("A. frog", 2, "A"),
        ("A.frog", 2, None),  # needs ". " after the letter
        ("I think The answer is B.", 2, "B"),
        ("The answer is E", 3, None),  # beyond the problem's choices
        ("", 2, None),
        ("AB", 2, None),
        ("B\nbecause", 2, "B"),  # newline read as ". "
    ],
)
def test_scienceqa_answer_parsing(text: str, n: int, letter: str | None) -> None:
    assert scienceqa.parse_answer(text, n) == letter


@pytest.mark.parametrize("answer", ["E", "AB", ""])
def test_seedbench_answer_outside_the_options_is_reported(tmp_path: Path, answer: str) -> None:
    paths = _write_seed(tmp_path)
    data = json.loads(paths["annotations"].read_text())
    data["questions"][1]["answer"] = answer
    paths["annotations"].write_text(json.dumps(data))
    with pytest.raises(
        ScorerInputError, match=rf"questions\[1\]: answer '{answer}' is not one of the 4 options"
    ):
        seedbench.read(paths)


@pytest.mark.parametrize(
    ("choices", "answer", "message"),
    [
        (["a", "b"], 2, "answer 2 is not one of the 2 options"),
        (["a", "b"], -1, "answer -1 is not one of the 2 options"),
        (["a", "b", "c", "d", "e", "f"], 0, "6 options, but at most 5"),
    ],
)
def test_scienceqa_answer_outside_the_choices_is_reported(
    tmp_path: Path, choices: list[str], answer: int, message: str
) -> None:
    paths = _write_sqa(tmp_path)
    problems = json.loads(paths["problems"].read_text())
    problems["11"].update(choices=choices, answer=answer)
    paths["problems"].write_text(json.dumps(problems))
    with pytest.raises(ScorerInputError, match=rf"problems.json: 11: {message}"):
        scienceqa.read(paths)
