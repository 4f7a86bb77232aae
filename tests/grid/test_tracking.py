"""grid.tracking against a real sqlite store: run names, the experiment's kind, the parent run's lifecycle,
secrets kept out, and a store that still finds its artifacts after it was moved."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from grid.expand import expand
from grid.redact import MASK
from grid.run import GridResult, parent_status
from grid.spec import load_spec
from grid.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker, axis_labels, run_name

SPEC = """\
name: {name}
base:
  data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 32, seed: 0}}}}}}
grid:
  axes:
    method.name: [llava, sea]
    model.encoder: [tiny-clip]
  zip:
    - {{stage1.lr: [0.001], stage2.lr: [0.0002]}}
output: {{root: {root}, tracking_uri: "sqlite:///{db}"}}
"""


def make_spec(tmp: Path, name: str = "tracked", db: Path | None = None) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(SPEC.format(name=name, root=tmp / "results", db=db or tmp / "mlflow.db")))
    return path


def test_axis_labels_short_and_unambiguous() -> None:
    assert axis_labels(["method.name", "model.encoder", "seed"]) == {
        "method.name": "method",
        "model.encoder": "encoder",
        "seed": "seed",
    }
    # Two axes ending in 'lr': as many trailing parts as it takes.
    assert axis_labels(["stage1.lr", "stage2.lr", "model.llm"]) == {
        "stage1.lr": "stage1.lr",
        "stage2.lr": "stage2.lr",
        "model.llm": "llm",
    }
    assert axis_labels(["a.x.lr", "b.x.lr"]) == {"a.x.lr": "a.x.lr", "b.x.lr": "b.x.lr"}
    name = run_name(
        {"method.name": "sea", "model.encoder": "tiny-clip", "data.stage1": {"seed": 3}}, "fallback"
    )
    assert name.startswith("method=sea, encoder=tiny-clip, stage1=#") and len(name.split("#")[1]) == 6
    assert run_name({}, "base-123") == "base-123"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tracked")
    spec_path = make_spec(tmp)
    spec = load_spec(spec_path)
    return {
        "tmp": tmp,
        "spec_path": spec_path,
        "trials": expand(spec, str(spec_path)),
        "uri": spec.output.tracking_uri,
    }


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_experiment_kind_and_trial_runs(tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_NotARealTokenButSecret")
    tracker = Tracker("tracked", tracked["uri"])
    parent = tracker.parent_run(str(tracked["spec_path"]))
    client = MlflowClient(tracked["uri"])
    exp = client.get_experiment_by_name("tracked")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"

    sea = next(t for t in tracked["trials"] if t.config.method.name == "sea")
    run_id = tracker.start_trial(
        sea, parent, tags={"hub_token": "abc", "note": "used hf_NotARealTokenButSecret"}
    )
    run = client.get_run(run_id)
    assert run.info.run_name == "method=sea, encoder=tiny-clip, stage1.lr=0.001, stage2.lr=0.0002"
    assert run.data.tags["trial_id"] == sea.id and run.data.tags["mlflow.parentRunId"] == parent
    # Secrets: a secret-named tag is masked, a secret environment value is scrubbed wherever it appears.
    assert run.data.tags["hub_token"] == MASK and run.data.tags["note"] == f"used {MASK}"
    tracker.fail(run_id, "Traceback ...\nRuntimeError: login with hf_NotARealTokenButSecret failed\n")
    tb = Path(client.download_artifacts(run_id, "traceback.txt", str(tracked["tmp"]))).read_text()
    assert "hf_NotARealTokenButSecret" not in tb and MASK in tb
    out = tracked["tmp"] / "eval_out"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"answer": "hf_NotARealTokenButSecret"}\n')
    (out / "image.png").write_bytes(b"\x89PNG not text")
    tracker.log_artifacts(run_id, out, "eval/stage1")
    logged = client.download_artifacts(run_id, "eval/stage1", str(tracked["tmp"] / "dl"))
    assert (Path(logged) / "predictions.jsonl").read_text() == f'{{"answer": "{MASK}"}}\n'
    assert (Path(logged) / "image.png").read_bytes() == b"\x89PNG not text"
    assert "hf_NotARealTokenButSecret" in (out / "predictions.jsonl").read_text()  # the original stays
    config = yaml.safe_load(
        Path(client.download_artifacts(run_id, "config.yaml", str(tracked["tmp"] / "cfg"))).read_text()
    )
    assert config == sea.config.model_dump(mode="json")  # nothing secret in it: unchanged
    tracker.close_parent(parent, "FAILED")


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_parent_run_lifecycle(tmp_path: Path) -> None:
    """Created RUNNING, ended by each invocation, reopened (the same run) by the next."""
    spec_path = make_spec(tmp_path, "lifecycle")
    tracker = Tracker("lifecycle", load_spec(spec_path).output.tracking_uri)
    client = MlflowClient(tracker.uri)
    parent = tracker.parent_run(str(spec_path))
    assert client.get_run(parent).info.status == "RUNNING"
    tracker.close_parent(parent, "FINISHED")
    assert client.get_run(parent).info.status == "FINISHED"
    again = Tracker("lifecycle", tracker.uri).parent_run(str(spec_path))
    assert again == parent and client.get_run(parent).info.status == "RUNNING"
    tracker.close_parent(parent, parent_status(GridResult(status={"a": "done", "b": "failed"}), None))
    assert client.get_run(parent).info.status == "FAILED"
    assert parent_status(GridResult(status={"a": "done"}), None) == "FINISHED"
    assert parent_status(GridResult(), KeyboardInterrupt()) == "KILLED"
    assert parent_status(GridResult(), RuntimeError("x")) == "FAILED"
    # A store made by an older seagrid (no kind tag) gets it; a kind a user chose is left alone.
    exp_id = client.get_experiment_by_name("lifecycle").experiment_id
    client.delete_experiment_tag(exp_id, EXPERIMENT_KIND_TAG)
    Tracker("lifecycle", tracker.uri).parent_run()
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "genai_development")
    Tracker("lifecycle", tracker.uri).parent_run()
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_moved_store_finds_its_artifacts(tmp_path: Path) -> None:
    """A store folder moved elsewhere (a re-cloned repository): old artifacts read, new ones land beside it."""
    old_dir = tmp_path / "clone-a" / "mlflow"
    old_dir.mkdir(parents=True)
    spec_path = make_spec(tmp_path, "moved", db=old_dir / "mlflow.db")
    (trial, *_) = expand(load_spec(spec_path), str(spec_path))
    tracker = Tracker("moved", f"sqlite:///{old_dir / 'mlflow.db'}")
    run_id = tracker.start_trial(trial, tracker.parent_run())
    assert (old_dir / "artifacts").is_dir()

    new_dir = tmp_path / "clone-b" / "mlflow"
    new_dir.parent.mkdir()
    shutil.move(old_dir, new_dir)
    uri = f"sqlite:///{new_dir / 'mlflow.db'}"
    moved = Tracker("moved", uri)
    assert (
        moved.client.get_experiment(moved.experiment_id).artifact_location == (new_dir / "artifacts").as_uri()
    )
    run = moved.client.get_run(run_id)
    assert run.info.artifact_uri.startswith((new_dir / "artifacts").as_uri() + "/")
    text = Path(moved.client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert yaml.safe_load(text) == trial.config.model_dump(mode="json")
    second = moved.start_trial(trial, moved.parent_run())
    assert Path(moved.client.get_run(second).info.artifact_uri.removeprefix("file://")).is_relative_to(
        new_dir
    )
