"""`seagrid data SPEC`: what a spec's datasets need on disk, what is there, and where to get the rest."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from core.config.trial import METHODS_WITH_SEA
from core.data.llava_json import load_llava_records
from core.labels.words import DEFAULT_2OF12_PATH, TWO_OF_TWELVE_COUNT, TWO_OF_TWELVE_SOURCE, read_2of12
from grid.expand import expand
from grid.spec import load_spec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_LLAVA_EVAL = (
    "LLaVA's evaluation layout: download eval.zip (LLaVA docs/Evaluation.md) and extract it so that "
    "playground/data/eval becomes data/eval"
)
# Where each known dataset comes from: matched on the dataset name or benchmark name (explicit, no guessing).
SOURCES: dict[str, dict[str, Any]] = {
    "llava-pretrain-558k": {
        "repo": "liuhaotian/LLaVA-Pretrain",
        "text": "hub dataset liuhaotian/LLaVA-Pretrain: blip_laion_cc_sbu_558k.json next to json_path, and "
        "images.zip extracted into image_root (its 00000/... folders directly under it)",
    },
    "llava-v1.5-mix665k": {
        "repo": "liuhaotian/LLaVA-Instruct-150K",
        "text": "hub dataset liuhaotian/LLaVA-Instruct-150K: llava_v1_5_mix665k.json at json_path; under "
        "image_root: coco/train2017 (COCO 2017 train images), gqa/images (GQA images), ocr_vqa/images "
        "(OCR-VQA, LLaVA's download script, saved as .jpg), textvqa/train_images (TextVQA train_val "
        "images), vg/VG_100K and vg/VG_100K_2 (VisualGenome part 1 and 2)",
    },
    "pope": {"text": f"{_LLAVA_EVAL}; pope/coco holds POPE's coco_pope_*.json, pope/val2014 COCO val2014"},
    "gqa": {"text": f"{_LLAVA_EVAL}; gqa/testdev_balanced_questions.json and gqa/images from the GQA site"},
    "textvqa": {"text": f"{_LLAVA_EVAL}; textvqa/TextVQA_0.5.1_val.json and train_images from textvqa.org"},
    "mmbench": {"text": f"{_LLAVA_EVAL}; mmbench/mmbench_dev_20230712.tsv from the MMBench release"},
    "scienceqa-img": {"text": f"{_LLAVA_EVAL}; scienceqa images/test from the ScienceQA repository"},
    "mmlu": {"text": f"{_LLAVA_EVAL}; mmlu/test: the csv files of hendrycks' MMLU data.tar"},
    "2of12": {"text": TWO_OF_TWELVE_SOURCE},
    "coco-captions": {
        "text": "COCO 2014 captions: annotations/captions_val2014.json from the COCO site (cocodataset.org) at "
        "json_path, the val2014 images at image_root (the POPE layout's pope/val2014 has them); the first "
        "heldout_samples images with their first caption are used"
    },
}


@dataclass
class Need:
    """One path a spec reads: a JSON list with its image root, a file, a directory, or an image root."""

    kind: str  # "llava" (json + image root), "file", "dir", "images"
    path: Path
    label: str  # e.g. "stage2 dataset llava-v1.5-mix665k", "benchmark gqa question_file"
    source: str  # key into SOURCES, or ""
    image_root: Path | None = None
    field: str = ""  # the spec field that names the path (in error messages)
    # Reads the file(s) exactly as its consumer will (the same function), returning a summary line;
    # raises ValueError on what the consumer would refuse. None: presence and size only.
    reads: Callable[[], str] | None = None
    hint: str = ""  # where to get it, when the need declares it (official benchmark families)


@dataclass
class Finding:
    need: Need
    ok: bool
    lines: list[str] = field(default_factory=list)


def spec_needs(spec_path: str) -> list[Need]:
    """Every on-disk input of the spec's trials (enabled stages, enabled benchmarks, diagnostics, SEA word
    files), once."""
    spec = load_spec(spec_path)
    return needs_of_trials(expand(spec, spec_path))


def needs_of_trials(trials: Iterable[Any]) -> list[Need]:
    """The on-disk inputs of these trials, once each (`seagrid data` and the pre-flight of a run)."""
    out: dict[tuple[str, str], Need] = {}

    def add(need: Need) -> None:
        out.setdefault((need.kind, str(need.path)), need)

    for trial in trials:
        cfg = trial.config
        stages = [("stage1", cfg.stage1.enabled), ("stage2", cfg.stage2.enabled)]
        for stage, enabled in stages:
            data = getattr(cfg.data, stage)
            if enabled and data.source == "llava":
                label = f"{stage} dataset {data.name}"
                root = _path(data.image_root)
                add(Need("llava", _path(data.json_path), label, data.name, root, f"data.{stage}.json_path"))
        if cfg.eval.enabled:
            for bench in cfg.eval.benchmarks:
                if bench.source == "files":
                    add_benchmark(bench, add)
            add_diagnostics(cfg.eval.diagnostics, add)
        words = cfg.method.sea.words
        if cfg.method.name in METHODS_WITH_SEA and words.source == "file":
            add(word_list_need(_path(words.path), "SEA word list (one word per line)"))
        if cfg.method.name in METHODS_WITH_SEA and words.source.endswith("2of12"):
            path = _path(words.path or DEFAULT_2OF12_PATH)
            add(Need("2of12", path, f"SEA 2of12 word list ({TWO_OF_TWELVE_COUNT:,} words)", "2of12"))
    return list(out.values())


def _path(value: str) -> Path:
    return Path(value).expanduser()  # `~/data/...` is the user's home, as the loaders read it


def word_list_need(path: Path, label: str) -> Need:
    """A word list, read by the reader the labels and diagnostics use (UTF-8, BOM, duplicates)."""

    def reads() -> str:
        from core.labels.words import read_word_list

        return f"{len(read_word_list(path))} words"

    return Need("file", path, label, "", reads=reads)


def add_diagnostics(diag: Any, add: Any) -> None:
    """The held-out set of the alignment diagnostics (source files): read as the diagnostics read it."""
    if diag.source != "files":
        return
    path = _path(diag.json_path)

    def reads() -> str:
        from core.evaluation.caption_sets import read_caption_set

        return f"{len(read_caption_set(path, diag.heldout_samples))} captioned images"

    field = "eval.diagnostics.json_path"
    add(Need("file", path, "diagnostics held-out set", "coco-captions", field=field, reads=reads))
    add(Need("images", _path(diag.image_root), "diagnostics held-out set image_root", "coco-captions"))
    if diag.words_file:
        add(word_list_need(_path(diag.words_file), "diagnostics word list (one word per line)"))
    if diag.label_store:
        add(Need("dir", _path(diag.label_store), "diagnostics label store", ""))


def add_benchmark(bench: Any, add: Any) -> None:
    from grid.data_official import is_official, official_needs

    if is_official(bench):
        for need in official_needs(bench, Need):
            add(need)
        return
    kinds = {
        "question_file": "file",
        "annotation_file": "file",
        "annotation_dir": "dir",
        "image_root": "images",
    }
    # The need that carries the benchmark's own reader (the others are its inputs).
    reader_on = "annotation_dir" if bench.kind == "pope" else "question_file"
    for name, kind in kinds.items():
        value = getattr(bench, name)
        if value is None:
            continue
        path = _path(value)
        # A directory question_file (MMLU's csv folder) is checked as a directory.
        kind = "dir" if kind == "file" and (path.is_dir() or not path.suffix) else kind
        reads = benchmark_reader(bench) if name == reader_on else None
        add(Need(kind, path, f"benchmark {bench.name} {name}", bench.name, field=name, reads=reads))


def benchmark_reader(bench: Any) -> Callable[[], str]:
    """The benchmark's files read by the evaluation's own reader (core.evaluation.benchmarks)."""

    def reads() -> str:
        from core.evaluation.benchmarks import bench_files, read_mc, read_pope, read_vqa

        files = bench_files(bench, None)
        if bench.kind == "pope":
            assert files.annotation_dir is not None  # BenchmarkConfig requires it (as pope.read)
            try:
                splits = read_pope(files.annotation_dir, files.question_file, bench.splits)
            except ValueError as err:
                raise ValueError(f"{err}{_pope_layout_hint(files.annotation_dir)}") from None
            return f"{sum(len(v) for v in splits.values())} questions in {len(splits)} splits, as evaluation reads them"
        # BenchmarkConfig requires these files with source "files" (vqa.read and mc.read assert the same).
        assert files.question_file is not None
        if bench.kind == "vqa":
            assert files.annotation_file is not None
            count = len(read_vqa(files.question_file, files.annotation_file))
        else:
            count = len(read_mc(files.question_file))
        return f"{count} questions, as evaluation reads them"

    return reads


def _pope_layout_hint(annotation_dir: Path | None) -> str:
    """Where POPE's label files are when annotation_dir is one level off."""
    if annotation_dir is None or not annotation_dir.is_dir():
        return ""
    found = sorted({p.parent for p in annotation_dir.glob("*/coco_pope_*.json")})
    if not found and annotation_dir.parent.is_dir() and any(annotation_dir.parent.glob("coco_pope_*.json")):
        found = [annotation_dir.parent]
    return f"; the coco_pope_*.json files are in {found[0]}: set annotation_dir to it" if found else ""


def _decodes(path: Path) -> str | None:
    """None when PIL decodes the file, else why not."""
    try:
        with Image.open(path) as image:
            image.load()
        return None
    except (OSError, UnidentifiedImageError) as err:
        return str(err)


def _image_files(root: Path) -> Iterable[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(folder) / name


def check_images(root: Path, sample: int, rng: random.Random) -> Finding:
    need = Need("images", root, "", "")
    if not root.is_dir():
        return Finding(need, False, [f"missing directory {root}"])
    files = list(_image_files(root))
    if not files:
        return Finding(need, False, [f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})"])
    bad = [(p, why) for p in rng.sample(files, min(sample, len(files))) if (why := _decodes(p))]
    lines = [f"{root}: {len(files)} images, {_size(files)}; {min(sample, len(files)) - len(bad)} of a sample of "
             f"{min(sample, len(files))} decode"]  # fmt: skip
    lines += [f"cannot decode {p} ({why}); replace or re-download it" for p, why in bad]
    return Finding(need, not bad, lines)


def _size(files: list[Path]) -> str:
    total = sum(p.stat().st_size for p in files)
    return f"{total / 1e9:.2f} GB" if total >= 1e8 else f"{total / 1e6:.1f} MB"


def _read_records(path: Path) -> list[Any]:
    """A JSON list, or a jsonl file's objects; raises ValueError naming the file and line."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON Lines ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno} ({err.msg})"
        ) from None
    return data if isinstance(data, list) else [data]


def check_llava(need: Need, sample: int, rng: random.Random) -> Finding:
    """The JSON passes the loaders' own check (core.data.llava_json); a sample of its image references
    exist under image_root and decode."""
    path, root = need.path, need.image_root
    assert root is not None
    if not path.is_file():
        return Finding(need, False, [f"missing JSON {path}"])
    try:
        records = load_llava_records(path, need.field or "json_path")
    except (ValueError, OSError) as err:
        return Finding(need, False, [f"cannot read {path}: {err}; fix or re-download it"])
    lines = [f"{path}: {len(records)} records, {path.stat().st_size / 1e6:.1f} MB"]
    with_image = [r for r in records if r.get("image")]
    if not with_image:
        return Finding(need, True, lines)
    if not root.is_dir():
        return Finding(
            need, False, [*lines, f"missing image root {root} ({len(with_image)} records name an image)"]
        )
    picked = rng.sample(with_image, min(sample, len(with_image)))
    absent = [root / r["image"] for r in picked if not (root / r["image"]).is_file()]
    present = [root / r["image"] for r in picked if (root / r["image"]).is_file()]
    broken = [(p, why) for p in present if (why := _decodes(p))]
    lines.append(f"{root}: {len(present)} of a sample of {len(picked)} image references resolve, "
                 f"{len(present) - len(broken)} decode")  # fmt: skip
    for image in absent[:5]:
        lines.append(f"missing image {image} (referenced by {path})")
    if len(absent) > 5:
        lines.append(f"... and {len(absent) - 5} more missing in the sample")
    lines += [f"cannot decode {p} ({why}); replace or re-download it" for p, why in broken]
    return Finding(need, not absent and not broken, lines)


def check(need: Need, sample: int, seed: int = 0) -> Finding:
    """Check one need; the sample of images is drawn with `seed` (the same files each run)."""
    found = _check_presence(need, sample, random.Random(seed))
    if not found.ok or need.reads is None:
        return found
    try:
        return Finding(need, True, [*found.lines, need.reads()])
    except (ValueError, OSError) as err:
        return Finding(need, False, [*found.lines, f"refused as the trials would refuse it: {err}"])


def _check_presence(need: Need, sample: int, rng: random.Random) -> Finding:
    if need.kind == "llava":
        return check_llava(need, sample, rng)
    if need.kind == "images":
        found = check_images(need.path, sample, rng)
        return Finding(need, found.ok, found.lines)
    if need.kind == "java":
        from grid.data_official import java_line

        ok, line = java_line()
        return Finding(need, ok, [line])
    if need.kind == "2of12":
        try:
            return Finding(need, True, [f"{need.path}: {len(read_2of12(need.path)):,} words"])
        except ValueError as err:
            return Finding(need, False, [str(err)])
    if need.kind == "dir":
        if need.path.exists() and not need.path.is_dir():
            return Finding(need, False, [f"{need.path}: a file, but a directory is expected here"])
        if not need.path.is_dir():
            return Finding(need, False, [f"missing directory {need.path}"])
        files = [p for p in need.path.rglob("*") if p.is_file()]
        return Finding(need, bool(files), [f"{need.path}: {len(files)} files, {_size(files)}"])
    if need.path.is_dir():
        return Finding(need, False, [f"{need.path}: a directory, but a file is expected here"])
    if not need.path.is_file():
        return Finding(need, False, [f"missing file {need.path}"])
    if need.reads is None and need.path.suffix in (".json", ".jsonl"):
        try:
            count = len(_read_records(need.path))
        except (ValueError, OSError, UnicodeDecodeError) as err:
            return Finding(need, False, [f"cannot read {need.path}: {err}"])
        return Finding(need, True, [f"{need.path}: {count} entries, {need.path.stat().st_size / 1e6:.1f} MB"])
    size = need.path.stat().st_size
    return Finding(need, size > 0, [f"{need.path}: {size / 1e6:.1f} MB" + ("" if size else " (empty)")])


def where_to_get(need: Need) -> str:
    if need.hint:
        return need.hint
    known = SOURCES.get(need.source)
    if known:
        return known["text"]
    return "not a known public dataset: put the file the spec names at that path"


def download(needs: list[Need], console: Any) -> None:
    """Fetch the hub repositories of missing datasets (resumable; huggingface_hub's progress bars). Only
    the JSON and the image archive of the hub repo: the image sets of the 665K mix come from their sites."""
    from huggingface_hub import snapshot_download

    for need in needs:
        repo = SOURCES.get(need.source, {}).get("repo")
        if not repo:
            continue
        target = need.path.parent
        console.print(f"downloading {repo} into {target} (resumable)", highlight=False)
        snapshot_download(repo_id=repo, repo_type="dataset", local_dir=target)
        archive = target / "images.zip"
        if archive.is_file() and need.image_root is not None and not need.image_root.is_dir():
            import zipfile

            console.print(f"extracting {archive} into {need.image_root}", highlight=False)
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(need.image_root)


def run_data_check(spec_path: str, console: Any, *, sample: int = 16, fetch: bool = False) -> int:
    """Print each need's state and, for what is missing or broken, what to put where; 0 when all is there,
    1 otherwise."""
    needs = spec_needs(spec_path)
    if not needs:
        console.print(f"{spec_path}: every dataset is synthetic (generated on first use); nothing to fetch")
        return 0
    if fetch:
        download([n for n in needs if not check(n, sample).ok], console)
    failed = 0
    for need in needs:
        found = check(need, sample)
        failed += not found.ok
        console.print(f"[{'ok' if found.ok else 'MISSING'}] {need.label}", highlight=False, markup=False)
        for line in found.lines:
            console.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)
        if not found.ok:
            console.print(f"    get it: {where_to_get(need)}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"{len(needs) - failed} of {len(needs)} inputs present and readable", highlight=False)
    return 1 if failed else 0
