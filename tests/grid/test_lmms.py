"""lmms-eval on exported trials: its POPE scoring against seagrid's, and `seagrid lmms` end to end, offline."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import export_fixtures as fx
import numpy as np
import pytest
import yaml
from PIL import Image

from core.metrics.pope import pope_metrics

pope_utils = pytest.importorskip(
    "lmms_eval.tasks.pope.utils", reason="the optional lmms extra is not installed"
)

F1 = "lmms/seagrid_pope/pope_f1_score"
QUESTION = "Is there a red circle in the image?"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
AGGREGATES = {
    "accuracy": "pope_aggregate_accuracy",
    "precision": "pope_aggregate_precision",
    "recall": "pope_aggregate_recall",
    "f1": "pope_aggregate_f1_score",
}


def lmms_pope(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """lmms-eval's own POPE scoring (process_results per sample, then its aggregations)."""
    per_sample = [
        pope_utils.pope_process_results({"question_id": i, "answer": label}, [pred])["pope_accuracy"]
        for i, (pred, label) in enumerate(zip(predictions, labels, strict=True))
    ]
    return {name: getattr(pope_utils, fn)(per_sample) for name, fn in AGGREGATES.items()}


def test_pope_scoring_equals_seagrids_on_yes_no_answers():
    labels = ["yes", "no", "yes", "no", "yes", "no", "yes", "yes"]
    predictions = ["Yes", "no", " no", "No ", "yes", "yes", "yes\n", "no"]
    ours = pope_metrics(predictions, labels)
    theirs = lmms_pope(predictions, labels)
    assert theirs == pytest.approx({k: ours[k] for k in AGGREGATES}, abs=1e-12)


def test_pope_scoring_differences_are_known():
    """Where the two disagree (so numbers are compared only on yes/no answers): lmms-eval matches the whole
    answer, seagrid LLaVA's first-sentence rule; lmms-eval's yes_ratio is the labels', seagrid's the answers'."""
    labels = ["no", "yes"]
    predictions = ["No, there is not.", "Yes, there is."]
    assert pope_metrics(predictions, labels)["accuracy"] == 1.0
    assert lmms_pope(predictions, labels)["accuracy"] == 0.0
    per = [pope_utils.pope_process_results({"question_id": 0, "answer": "no"}, ["yes"])["pope_yes_ratio"]]
    assert (
        pope_utils.pope_aggregate_yes_ratio(per) == 0.0 and pope_metrics(["yes"], ["no"])["yes_ratio"] == 1.0
    )


def _task(tmp: Path, n: int) -> tuple[Path, list[dict]]:
    """A POPE-style lmms-eval task whose data (images, questions, labels) lives in `tmp`."""
    data, task = tmp / "data", tmp / "task"
    data.mkdir()
    task.mkdir()
    rows = []
    for i in range(n):
        path = data / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(
            path
        )
        rows.append(
            {
                "question_id": i,
                "question": QUESTION,
                "answer": "yes" if i % 2 else "no",
                "image_path": str(path),
            }
        )
    (data / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metric_list = "".join(
        f"  - metric: pope_{m}\n    aggregation: !function utils.pope_aggregate_{m}\n    higher_is_better: true\n"
        for m in ("accuracy", "precision", "recall", "f1_score")
    )
    (task / "seagrid_pope.yaml").write_text(
        "task: seagrid_pope\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'pope.jsonl'}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: !function utils.pope_doc_to_text\ndoc_to_target: answer\n"
        "generation_kwargs: {max_new_tokens: 1, temperature: 0, do_sample: false, num_beams: 1}\n"
        "process_results: !function utils.pope_process_results\n"
        f"metric_list:\n{metric_list}"
        f"lmms_eval_specific_kwargs:\n  default:\n    pre_prompt: ''\n    post_prompt: {json.dumps(POST_PROMPT)}\n"
    )
    (task / "utils.py").write_text(
        "from PIL import Image\nfrom lmms_eval.tasks.pope.utils import *  # noqa: F403\n\n\n"
        "def doc_to_visual(doc):\n    return [Image.open(doc['image_path']).convert('RGB')]\n"
    )
    return task, rows


def _answer_yes_or_no(export: Path, rows: list[dict]) -> None:
    """Rewrite the export's output layer so that its first token is ` yes` or ` no`, by the sign of one
    hidden unit that differs between the task's images (a tiny random model answers clean POPE words)."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(export, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(export)
    states = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: states.append(i[0][0, -1].float()))
    for row in rows:
        content = f"<image>\n{row['question']}{POST_PROMPT}"  # as lmms-eval's llava_hf builds it
        text = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        with torch.no_grad():
            model.float()(
                **processor(
                    images=[Image.open(row["image_path"]).convert("RGB")], text=text, return_tensors="pt"
                )
            )
    hook.remove()
    h = torch.stack(states)
    unit = int(torch.argmax(torch.minimum((h > 0).sum(0), (h < 0).sum(0)) * 1.0 + h.abs().min(0).values))
    yes, no = (
        processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(" " + w))[0]
        for w in ("yes", "no")
    )
    with torch.no_grad():
        weight = model.lm_head.weight
        weight.zero_()
        weight[yes, unit], weight[no, unit] = 10.0, -10.0
    model.to(torch.bfloat16).save_pretrained(export)


def test_a_child_drops_an_inherited_rendezvous():
    from core.rendezvous import without_rendezvous

    inherited = {
        "PATH": "/bin",
        "MASTER_PORT": "29500",
        "RANK": "3",
        "LOCAL_RANK": "0",
        "HF_HUB_OFFLINE": "1",
    }
    assert without_rendezvous(inherited) == {"PATH": "/bin", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_lmms_on_finished_trials_logs_to_mlflow(tmp_path, capsys, monkeypatch):
    from rich.console import Console
    from test_export_cli import _finish, _spec

    from grid.cli import main
    from grid.expand import expand
    from grid.report import build_report
    from grid.spec import load_spec
    from grid.tracking import Tracker

    outputs = fx.write_stage_outputs(tmp_path / "outputs", "tiny-hf-clip")
    spec_path = _spec(tmp_path, "tiny-hf-clip", [0])
    data = yaml.safe_load(spec_path.read_text())
    data["output"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec_path.write_text(yaml.safe_dump(data))
    trial_id = _finish(spec_path, 0, outputs)
    spec = load_spec(spec_path)
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    run_id = tracker.start_trial(expand(spec)[0], tracker.parent_run())
    tracker.finish(run_id, {"eval/pope": 0.5})
    assert main(["export", str(spec_path)]) == 0
    task, rows = _task(tmp_path, 8)
    export = tmp_path / "results" / "exports" / trial_id / "stage1"
    _answer_yes_or_no(export, rows)

    # As CI's run had it: an earlier in-process group left its rendezvous (a port still held) in the environment.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(busy.getsockname()[1]))):
        monkeypatch.setenv(key, value)
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(key, "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with busy:
        assert main(["lmms", str(spec_path), "--tasks", "seagrid_pope", "--include-path", str(task)]) == 0
    run = tracker.client.get_run(run_id)
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("lmms/")}
    (samples,) = [a.path for a in tracker.client.list_artifacts(run_id, "lmms/stage1")]
    local = Path(tracker.client.download_artifacts(run_id, samples, str(tmp_path / "dl")))
    lines = [json.loads(line) for line in local.read_text().splitlines()]
    predictions = [
        line["filtered_resps"][0] if isinstance(line["filtered_resps"], list) else line["filtered_resps"]
        for line in lines
    ]
    labels = [line["target"] for line in lines]
    assert {p.strip().lower() for p in predictions} == {"yes", "no"}  # clean answers, both kinds
    ours = pope_metrics(predictions, labels)
    expected = {
        "accuracy": "pope_accuracy",
        "precision": "pope_precision",
        "recall": "pope_recall",
        "f1": "pope_f1_score",
    }
    for name, metric in expected.items():
        assert logged[f"lmms/seagrid_pope/{metric}"] == pytest.approx(ours[name], abs=1e-9), name
    assert run.data.metrics["eval/pope"] == 0.5  # the trial's own metrics stay
    report = build_report(spec_path, rows=("method.name",), columns=[F1], console=Console(file=io.StringIO()))
    assert report.cell(F1, {"method.name": "llava"})["mean"] == pytest.approx(ours["f1"], abs=1e-9)
