"""The official scorer families as benchmark kinds: evaluate() on tiny models, synthetic sets, config, data check."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from core.config.evaluation import JUDGED_KINDS, OFFICIAL_KINDS, OFFICIAL_SYNTHETIC
from core.evaluation.benchmarks import BENCHMARKS, BenchmarkFileError, metric_names
from core.evaluation.benchmarks.official import KIND_FAMILY, ROLE_FIELDS, family_of
from core.evaluation.config import BenchmarkConfig, EvalConfig
from core.evaluation.run import evaluate
from core.evaluation.scorers import FAMILIES

TEMPLATE = "vicuna_v1"


@pytest.fixture(scope="module")
def letter_b():
    """The tiny VLM with its LLM always answering the token "B" (its highest logit, 10 above the rest)."""
    from core.models import build_vlm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: one thread is faster
    torch.manual_seed(0)
    vlm, tok = build_vlm("tiny-llama", "tiny-clip")
    vlm.eval()
    (token,) = tok("B", add_special_tokens=False).input_ids
    head = vlm.llm.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.bias[token] = 10.0
    vlm.llm.lm_head = new
    yield vlm, tok
    torch.set_num_threads(threads)


def png_bytes(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_vqav2(root: Path) -> dict[str, str]:
    """VQAv2's official val files: three questions on one COCO-named image."""
    (root / "val2014").mkdir(parents=True)
    (root / "val2014" / "COCO_val2014_000000000007.jpg").write_bytes(png_bytes())
    questions = [{"question_id": k, "image_id": 7, "question": f"Which letter {k}?"} for k in range(3)]
    refs = [["b"] * 10, ["b"] * 2 + ["c"] * 8, ["c"] * 10]
    annotations = [
        {"question_id": k, "answers": [{"answer": a} for a in r], "answer_type": "other"}
        for k, r in enumerate(refs)
    ]
    (root / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (root / "a.json").write_text(json.dumps({"annotations": annotations}))
    return {"question_file": str(root / "q.json"), "annotation_file": str(root / "a.json"),
            "image_root": str(root / "val2014")}  # fmt: skip


def write_mmbench(path: Path) -> str:
    """An MMBench dev tsv: question 1 (2 options, answer B), question 2 (3 options, answer B)."""
    image = base64.b64encode(png_bytes()).decode()
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(
            ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
        )
        w.writerow([1, "Which shape?", "nan", "square", "circle", "nan", "nan", "B", "shape", "attr", image])
        w.writerow([2, "Which colour?", "nan", "blue", "red", "green", "nan", "B", "colour", "attr", image])
    return str(path)


def test_vqav2_and_mmbench_circular_through_evaluate(letter_b, tmp_path: Path) -> None:
    """The real evaluation step scores two official kinds; metrics arrive under the declared names."""
    vlm, tok = letter_b
    cfg = EvalConfig.model_validate(
        {
            "enabled": True,
            "max_new_tokens": 5,  # the legacy kinds' length; official kinds use their own (below: 1 and 3)
            "diagnostics": {"heldout_samples": 4, "pictures": False},
            "synthetic": {"num_images": 4, "num_text_questions": 4},
            "benchmarks": [
                {"name": "vqav2", "kind": "vqav2", "source": "files", "max_new_tokens": 1,
                 **write_vqav2(tmp_path / "vqav2")},
                {"name": "mmb", "kind": "mmbench_en", "source": "files", "max_new_tokens": 1,
                 "question_file": write_mmbench(tmp_path / "mmb.tsv")},
                {"name": "mmb-long", "kind": "mmbench_en", "source": "files", "max_new_tokens": 3,
                 "question_file": str(tmp_path / "mmb.tsv")},
            ],
        }
    )  # fmt: skip
    out = tmp_path / "eval"
    metrics = evaluate(vlm, tok, cfg, llm_id="tiny-llama", stage="stage2", out_dir=out, log=None)
    for bench in cfg.benchmarks:
        assert {m for m in metrics if m.split("/")[1] == bench.name} == set(metric_names(bench))
    # VQAv2's 10-annotator accuracy on the processed answer "b": 1, (2 * 1/3 + 8 * 2/3) / 10 = 0.6, 0.
    assert metrics["eval/vqav2"] == pytest.approx(1.6 / 3)
    # CircularEval: "B" is right in pass 0 of each question and wrong after a rotation, so no question
    # counts (row by row it would be 2 of 5 passes).
    preds = [json.loads(line) for line in (out / "predictions" / "mmb.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["1", "1000001", "2", "1000002", "2000002"]
    assert {p["answer"] for p in preds} == {"B"}
    assert "C. red" in preds[3]["prompt"] or "C. blue" in preds[3]["prompt"]
    assert metrics["eval/mmb"] == 0.0
    # The per-benchmark answer length reaches the model: three "B" tokens, which match no option letter.
    long = [json.loads(line) for line in (out / "predictions" / "mmb-long.jsonl").read_text().splitlines()]
    assert {p["answer"] for p in long} == {"BBB"}


def test_official_kinds_on_the_synthetic_set(letter_b, tmp_path: Path, monkeypatch) -> None:
    vlm, tok = letter_b
    monkeypatch.setenv("SEAGRID_CACHE", str(tmp_path / "cache"))
    benches = [{"name": k, "kind": k, "max_samples": 3, "max_new_tokens": 1} for k in OFFICIAL_SYNTHETIC]
    cfg = EvalConfig.model_validate(
        {
            "enabled": True,
            "diagnostics": {"heldout_samples": 4, "pictures": False},
            "synthetic": {"num_images": 4, "num_text_questions": 4},
            "benchmarks": benches,
        }
    )
    out = tmp_path / "eval"
    metrics = evaluate(vlm, tok, cfg, llm_id="tiny-llama", stage="stage2", out_dir=out, log=None)
    for bench in cfg.benchmarks:
        assert {m for m in metrics if m.split("/")[1] == bench.name} == set(metric_names(bench))
        assert 0.0 <= metrics[f"eval/{bench.name}"] <= 1.0
    rows = lambda name: (out / "predictions" / f"{name}.jsonl").read_text().splitlines()  # noqa: E731
    assert len(rows("vqav2")) == len(rows("vizwiz")) == 3
    # Three MMBench questions of four options: four rotated passes each; CN asks in Chinese.
    assert len(rows("mmbench_en")) == len(rows("mmbench_cn")) == 12
    assert "请直接回答选项字母" in json.loads(rows("mmbench_cn")[0])["prompt"]


def test_every_family_is_a_registered_kind_with_its_files_in_the_config() -> None:
    from core.config.evaluation import OPTIONAL_FILES, REQUIRED_FILES

    assert set(KIND_FAMILY.values()) == set(FAMILIES)
    assert set(KIND_FAMILY) == set(OFFICIAL_KINDS) <= set(BENCHMARKS)
    for kind in OFFICIAL_KINDS:
        fields = {ROLE_FIELDS[f.role] for f in family_of(kind).files}
        assert fields == set(REQUIRED_FILES[kind]) | set(OPTIONAL_FILES.get(kind, ())), kind
    assert {k for k in OFFICIAL_KINDS if family_of(k).needs_judge} == set(JUDGED_KINDS)


def test_official_kind_mistakes_are_one_sentence() -> None:
    with pytest.raises(ValidationError, match="kind 'mme' has no synthetic set; set source: files"):
        BenchmarkConfig(name="mme", kind="mme")
    with pytest.raises(ValidationError, match="asks with its official prompt"):
        BenchmarkConfig(name="v", kind="vqav2", prompt="{question}")
    with pytest.raises(ValidationError, match="is not judged; drop judge"):
        BenchmarkConfig(name="v", kind="vqav2", judge={"model": "m"})
    with pytest.raises(ValidationError, match="max_new_tokens and judge are for the official kinds"):
        BenchmarkConfig(name="v", kind="vqa", max_new_tokens=3)


def test_a_judged_kind_without_a_judge_stops_before_generating(tmp_path: Path, monkeypatch) -> None:
    from core.evaluation.benchmarks import bench_files

    for env in ("SEAGRID_JUDGE_URL", "SEAGRID_JUDGE_MODEL"):
        monkeypatch.delenv(env, raising=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "mm-vet.json").write_text("{}")
    bench = BenchmarkConfig(
        name="mm-vet", kind="mm_vet", source="files", annotation_file=str(tmp_path / "mm-vet.json"),
        image_root=str(tmp_path / "images"),
    )  # fmt: skip
    with pytest.raises(BenchmarkFileError, match="benchmark 'mm-vet': no judge base_url and model"):
        BENCHMARKS["mm_vet"].read(bench, bench_files(bench, None))


@pytest.mark.parametrize("name", ["scaling", "encoders", "transfer", "basic", "ablation_basic"])
def test_every_paper_column_maps_to_a_registered_benchmark(name: str) -> None:
    """`just plan` of each paper spec: no `no benchmark` cell; each column is a metric a benchmark declares."""
    from grid.expand import expand
    from grid.published import load_published
    from grid.spec import load_spec
    from grid.table_cells import NO_BENCHMARK, benchmark_metrics, cell_states

    rel = f"experiments/{name}.yaml"
    trials = expand(load_spec(rel), rel)
    published = load_published(rel)
    assert published is not None and published.tables
    declared = set().union(*(benchmark_metrics(t) for t in trials))
    for table in published.tables:
        assert set(table.columns) <= declared, (table.title, sorted(set(table.columns) - declared))
        states = [s for _, cells in cell_states(table, trials) for s in cells.values()]
        assert NO_BENCHMARK not in states, table.title
    kinds = {b.kind for t in trials for b in t.config.eval.benchmarks}
    assert kinds <= set(BENCHMARKS) and {"vqav2", "vizwiz", "mm_vet", "mmbench_en"} <= kinds


class _Grader(BaseHTTPRequestHandler):
    """An OpenAI-style chat-completions server grading MM-Vet like its grader: 1.0 when the ground truth
    occurs in the prediction, else 0.0."""

    requests = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        _Grader.requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _, truth, pred, _ = body["messages"][-1]["content"].split("\n")[-1].split(" | ")
        reply = {"choices": [{"message": {"content": "1.0" if truth.strip() in pred else "0.0"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_mm_vet_through_a_local_judge_from_the_spec(letter_b, tmp_path: Path, monkeypatch) -> None:
    from core.evaluation.benchmarks import run_benchmark

    vlm, tok = letter_b
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Grader)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    (tmp_path / "images").mkdir()
    data = {}
    for k, truth in enumerate(["B", "dog"]):
        Image.new("RGB", (16, 16)).save(tmp_path / "images" / f"v1_{k}.png")
        data[f"v1_{k}"] = {
            "imagename": f"v1_{k}.png",
            "capability": ["rec"],
            "question": "Q?",
            "answer": truth,
        }
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    judge = {"base_url": f"http://127.0.0.1:{httpd.server_address[1]}/v1", "model": "judge-x",
             "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    bench = BenchmarkConfig(
        name="mm-vet", kind="mm_vet", source="files", annotation_file=str(tmp_path / "mm-vet.json"),
        image_root=str(tmp_path / "images"), max_new_tokens=2, judge=judge,
    )  # fmt: skip
    try:
        metrics, preds = run_benchmark(vlm, tok, bench, TEMPLATE, log=None)
        assert _Grader.requests == 2
        assert set(metrics) == set(metric_names(bench))
        assert metrics["eval/mm-vet"] == pytest.approx(50.0)  # "BB" holds "B", not "dog": 100 x 1/2
        assert {p["judge_model"] for p in preds} == {"judge-x"} and {p["answer"] for p in preds} == {"BB"}
        assert run_benchmark(vlm, tok, bench, TEMPLATE, log=None)[0] == metrics
        assert _Grader.requests == 2  # the rerun is answered from the cache
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_sharded_official_kind_scores_as_unsharded(letter_b, tmp_path: Path) -> None:
    """Two shards each run their batches of MMBench's passes; the replayed outputs score as one run."""
    from core.evaluation.benchmarks import benchmark_outputs, run_benchmark
    from core.evaluation.shard import Shard, gather_outputs, write_outputs

    vlm, tok = letter_b
    bench = BenchmarkConfig(
        name="mmb", kind="mmbench_en", source="files", max_new_tokens=1,
        question_file=write_mmbench(tmp_path / "mmb.tsv"),
    )  # fmt: skip
    whole = run_benchmark(vlm, tok, bench, TEMPLATE, batch_size=2, log=None)
    files = []
    for index in range(2):
        recorded = benchmark_outputs(vlm, tok, bench, TEMPLATE, Shard(index, 2), batch_size=2)
        write_outputs(tmp_path / f"shard{index}.json", recorded)
        files.append(tmp_path / f"shard{index}.json")
    replayed = run_benchmark(None, None, bench, TEMPLATE, log=None, replay=gather_outputs(files))
    assert replayed == whole and len(whole[1]) == 5


def test_submission_kinds_are_the_families_with_an_answer_file() -> None:
    from core.config.evaluation import SUBMISSION_KINDS

    assert set(SUBMISSION_KINDS) == {k for k in KIND_FAMILY if family_of(k).submit is not None}
    assert {k for k in BENCHMARKS if BENCHMARKS[k].submit is not None} == set(SUBMISSION_KINDS)
    with pytest.raises(
        ValidationError, match="kind 'pope' has no evaluation server answer file; drop submission"
    ):
        BenchmarkConfig(name="p", kind="pope", submission=True)
    with pytest.raises(ValidationError, match="kind 'mme' has no evaluation server answer file"):
        BenchmarkConfig(name="m", kind="mme", source="files", annotation_dir="x", submission=True)


def test_test_splits_write_the_servers_answer_files(letter_b, tmp_path: Path) -> None:
    """`submission: true` through the real evaluation step: VQAv2 test-dev (questions, no annotations) and
    MMBench test (no answer column) give NaN metrics and the servers' files; val VQAv2 gives both."""
    from openpyxl import load_workbook

    vlm, tok = letter_b
    val = write_vqav2(tmp_path / "vqav2")
    test_dev = {k: v for k, v in val.items() if k != "annotation_file"}
    text = Path(write_mmbench(tmp_path / "mmb.tsv")).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    answer = rows[0].index("answer")
    with (tmp_path / "mmb_test.tsv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter="\t").writerows([r[:answer] + r[answer + 1 :] for r in rows])
    one = {"source": "files", "max_new_tokens": 1, "submission": True}
    cfg = EvalConfig.model_validate(
        {
            "enabled": True,
            "diagnostics": {"heldout_samples": 4, "pictures": False},
            "synthetic": {"num_images": 4, "num_text_questions": 4},
            "benchmarks": [
                {"name": "vqav2-test", "kind": "vqav2", **one, **test_dev},
                {"name": "vqav2-val", "kind": "vqav2", **one, **val},
                {"name": "mmb-test", "kind": "mmbench_en", **one, "question_file": str(tmp_path / "mmb_test.tsv")},
            ],
        }
    )  # fmt: skip
    out = tmp_path / "eval"
    metrics = evaluate(vlm, tok, cfg, llm_id="tiny-llama", stage="stage2", out_dir=out, log=None)
    assert metrics["eval/vqav2-test"] != metrics["eval/vqav2-test"]  # NaN: nothing to score on test-dev
    assert metrics["eval/mmb-test"] != metrics["eval/mmb-test"]
    assert metrics["eval/vqav2-val"] == pytest.approx(1.6 / 3)  # as without submission
    for name in ("vqav2-test", "vqav2-val"):
        # EvalAI's processed answers, one per question of the file, ids as the server wants them (ints).
        got = json.loads((out / "submissions" / f"{name}.json").read_text())
        assert got == [{"question_id": k, "answer": "b"} for k in range(3)]
    sheet = load_workbook(out / "submissions" / "mmb-test.xlsx").active
    table = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert table[0] == ["index", "question", "A", "B", "C", "prediction"]
    # Every CircularEval pass (MMBench's numbering: index + pass * 1e6), each with the options as shown.
    assert [r[0] for r in table[1:]] == [1, 1000001, 2, 1000002, 2000002] and {r[-1] for r in table[1:]} == {
        "B"
    }
    assert table[1][2:4] == ["square", "circle"] and table[2][2:4] == ["circle", "square"]
