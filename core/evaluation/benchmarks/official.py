"""The official scorer families (core/evaluation/scorers) as benchmark kinds of the registry."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.evaluation.benchmarks.context import RunContext
from core.evaluation.benchmarks.files import BenchFiles, BenchmarkFileError, ImageRef
from core.evaluation.benchmarks.kind import BenchmarkKind, Scored
from core.evaluation.benchmarks.official_synthetic import SYNTHETIC
from core.evaluation.config import BenchmarkConfig
from core.evaluation.scorers import FAMILIES, Family, ScorerInputError
from core.evaluation.scorers.judge import Judge, JudgeConfig, JudgeError

# Benchmark kind (`BenchmarkConfig.kind`) -> scorer family name.
KIND_FAMILY: dict[str, str] = {
    "vqav2": "vqav2",
    "vizwiz": "vizwiz",
    "mmbench_en": "mmbench",
    "mmbench_cn": "mmbench_cn",
    "mme": "mme",
    "mmvp": "mmvp",
    "ocrbench": "ocrbench",
    "seedbench": "seedbench",
    "mmmu": "mmmu",
    "scienceqa": "scienceqa",
    "coco_caption": "coco_caption",
    "mm_vet": "mmvet",
    "llava_wild": "llava_wild",
}

# A family's file role -> the BenchFiles field (BenchmarkConfig file field of the same name) naming it.
ROLE_FIELDS: dict[str, str] = {
    "questions": "question_file",
    "tsv": "question_file",
    "problems": "question_file",
    "annotations": "annotation_file",
    "splits": "annotation_file",
    "answers": "annotation_file",
    "root": "annotation_dir",
    "images": "image_root",
    "context": "context_file",
}

# New tokens per runner (LLaVA-1.5's eval scripts: 128 for short answers, which stop early anyway;
# captions are one sentence; MM-Vet / LLaVA-Bench answers run long, LLaVA allows 1024).
RUNNER_TOKENS: dict[str, int] = {"short_answer": 16, "letter": 16, "caption": 64, "long_answer": 1024}


@dataclass(frozen=True)
class OfficialItem:
    """One family sample and the question LLaVA asks for it."""

    sample: Any
    prompt: str
    image: ImageRef | None


def family_of(kind: str) -> Family:
    return FAMILIES[KIND_FAMILY[kind]]


def role_paths(kind: str, files: BenchFiles) -> dict[str, Path]:
    """The family's roles -> the configured paths (roles with no path are left out: `read` names them)."""
    out = {}
    for f in family_of(kind).files:
        value = getattr(files, ROLE_FIELDS[f.role])
        if value is not None:
            out[f.role] = Path(value)
    return out


def _image(sample: Any) -> ImageRef | None:
    image = getattr(sample, "image", None)
    if image is None and getattr(sample, "images", None):
        image = sample.images[0]  # MMMU: LLaVA-1.5 sees one image, the first
    if image is None:
        return None
    if isinstance(image, bytes):
        return ImageRef(data=image)
    return ImageRef(path=str(Path(image).absolute()))


def _limit(samples: list[Any], max_samples: int | None) -> list[Any]:
    """The first `max_samples` questions; MMBench's rotated passes of a question (`group`) count once,
    so a limit never splits CircularEval."""
    if max_samples is None:
        return samples
    kept: list[Any] = []
    groups: set[Any] = set()
    for s in samples:
        key = getattr(s, "group", s.id)
        if key not in groups and len(groups) == max_samples:
            break
        groups.add(key)
        kept.append(s)
    return kept


def judge_for(bench: BenchmarkConfig) -> Judge:
    """The judge of a judged kind, from the spec's settings and the environment (one sentence if missing)."""
    settings = bench.judge.model_dump(exclude_none=True) if bench.judge is not None else {}
    try:
        return Judge(JudgeConfig.from_env(**settings))
    except JudgeError as err:
        raise BenchmarkFileError(f"benchmark '{bench.name}': {err}") from None


def read(kind: str, bench: BenchmarkConfig, files: BenchFiles) -> list[OfficialItem]:
    family = family_of(kind)
    if family.needs_judge:
        judge_for(bench)  # a missing judge is found before the model generates anything
    try:
        samples = family.read(role_paths(kind, files))
    except ScorerInputError as err:
        raise BenchmarkFileError(f"benchmark '{bench.name}': {err}") from None
    return [OfficialItem(s, family.prompt(s), _image(s)) for s in _limit(samples, bench.max_samples)]


def ask(kind: str, ctx: RunContext, bench: BenchmarkConfig, items: list[OfficialItem]) -> list[str]:
    saved = ctx.max_new_tokens
    ctx.max_new_tokens = bench.max_new_tokens or RUNNER_TOKENS[family_of(kind).runner]
    try:
        where = f"{bench.name} sample"
        return ctx.generate([(it.prompt, it.image, f"{where} {it.sample.id}") for it in items])
    finally:
        ctx.max_new_tokens = saved


def _fixed(family: Family) -> list[str]:
    # Names with a "/" are per-category (MM-Vet's capability/<c>): like the ones built from the data,
    # they exist only when the data has that category, so they are not part of the fixed set.
    return [m for m in family.metrics if m != family.headline and "/" not in m]


def metric_names(kind: str, bench: BenchmarkConfig) -> tuple[str, ...]:
    """The headline as "" (eval/<name>) and the family's other fixed metrics; per-category numbers stay
    in the family's own result (not logged)."""
    return ("", *_fixed(family_of(kind)))


def score(kind: str, bench: BenchmarkConfig, items: list[OfficialItem], answers: list[str]) -> Scored:
    family = family_of(kind)
    samples = [it.sample for it in items]
    predictions = {s.id: a for s, a in zip(samples, answers, strict=True)}
    extra: dict[str, Any] = {}
    if family.unanswered is not None and family.unanswered(samples):
        raw: dict[str, float] = {}  # a test split: the answer file is the result (submission: true)
    elif family.needs_judge:
        judge = judge_for(bench)
        raw = family.score(samples, predictions, judge=judge)
        extra["judge_model"] = judge.model
        print(f"[eval] {bench.name}: judged by {judge.model} ({judge.requests_sent} requests, rest cached)")
    else:
        raw = family.score(samples, predictions)
    # A part the data lacks (SEED-Bench's video questions when only images are read, ScienceQA's
    # image accuracy without images): NaN, so the declared names still arrive and no cell reads 0.
    metrics = {"": float(raw.get(family.headline, math.nan))}
    metrics.update({m: float(raw.get(m, math.nan)) for m in _fixed(family)})
    preds = [
        {"id": it.sample.id, "prompt": it.prompt, "answer": a, **extra}
        for it, a in zip(items, answers, strict=True)
    ]
    return metrics, preds


def submit(kind: str, bench: BenchmarkConfig, items: list[OfficialItem], answers: list[str], d: Path) -> Path:
    """The evaluation server's answer file for these answers, `<d>/<name><suffix>`."""
    family = family_of(kind)
    assert family.submit is not None, f"kind {kind} has no answer file (BenchmarkConfig refuses submission)"
    samples = [it.sample for it in items]
    predictions = {s.id: a for s, a in zip(samples, answers, strict=True)}
    return family.submit(samples, predictions, d / f"{bench.name}{family.submission_suffix}")


def synthetic(kind: str, d: Path) -> BenchFiles:
    if kind not in SYNTHETIC:
        # BenchmarkConfig refuses source synthetic for these kinds; this is the second line of defence.
        raise BenchmarkFileError(f"benchmark kind '{kind}' has no synthetic set; use source: files")
    return SYNTHETIC[kind](d)


def _kind(kind: str) -> BenchmarkKind[OfficialItem, str]:
    p = functools.partial
    writer = p(submit, kind) if family_of(kind).submit is not None else None
    return BenchmarkKind(
        p(read, kind), p(ask, kind), p(score, kind), p(synthetic, kind), p(metric_names, kind), writer
    )


OFFICIAL: Mapping[str, BenchmarkKind[Any, Any]] = {k: _kind(k) for k in KIND_FAMILY}
