"""Evaluation settings of a trial (benchmarks, diagnostics): strict pydantic sections of the config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config.base import IDENTITY_IF_SET, NOT_IDENTITY, Strict

BenchmarkKind = Literal[
    "pope",
    "vqa",
    "mc",
    "text_mc",
    # The papers' benchmarks scored by their official rules (core/evaluation/scorers, adapted in
    # core/evaluation/benchmarks/official.py): each reads its own official files.
    "vqav2",
    "vizwiz",
    "mmbench_en",
    "mmbench_cn",
    "mme",
    "mmvp",
    "ocrbench",
    "seedbench",
    "mmmu",
    "scienceqa",
    "coco_caption",
    "mm_vet",
    "llava_wild",
]
Stage = Literal["after_stage1", "after_stage2"]
PopeSplit = Literal["adversarial", "popular", "random"]

# Which file fields each kind reads with source "files" (required ones first, then optional ones).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "pope": ("annotation_dir", "image_root"),
    "vqa": ("question_file", "annotation_file", "image_root"),
    "mc": ("question_file",),
    "text_mc": ("question_file",),
    "vqav2": ("question_file", "image_root"),
    "vizwiz": ("annotation_file", "image_root"),
    "mmbench_en": ("question_file",),
    "mmbench_cn": ("question_file",),
    "mme": ("annotation_dir",),
    "mmvp": ("question_file", "image_root"),
    "ocrbench": ("annotation_file", "image_root"),
    "seedbench": ("annotation_file", "image_root"),
    "mmmu": ("annotation_dir",),
    "scienceqa": ("question_file", "annotation_file", "image_root"),
    "coco_caption": ("annotation_file", "image_root"),
    "mm_vet": ("annotation_file", "image_root"),
    "llava_wild": ("question_file", "context_file", "annotation_file", "image_root"),
}
OPTIONAL_FILES: dict[str, tuple[str, ...]] = {
    "pope": ("question_file",),
    "vqa": (),
    "mc": ("image_root",),
    "text_mc": (),
    "vqav2": ("annotation_file",),  # val has answers; test-dev has none (answer file only)
}
FILE_FIELDS = ("question_file", "annotation_file", "annotation_dir", "image_root", "context_file")
# Kinds with a synthetic set (their official file formats written from the synthetic world); the other
# official kinds need their real files (source: files).
OFFICIAL_SYNTHETIC = ("vqav2", "vizwiz", "mmbench_en", "mmbench_cn")
OFFICIAL_KINDS = tuple(k for k in REQUIRED_FILES if k not in ("pope", "vqa", "mc", "text_mc"))
JUDGED_KINDS = ("mm_vet", "llava_wild")
# Kinds whose evaluation server takes an answer file (its scorer family has a `submit` writer; a test
# keeps the two equal): VQAv2 test-dev, VizWiz test (JSON), MMBench test (xlsx).
SUBMISSION_KINDS = ("vqav2", "vizwiz", "mmbench_en", "mmbench_cn")
_FILE_HELP = {
    "pope": "annotation_dir (the coco_pope_<split>.json files) and image_root; question_file optional "
    "(LLaVA's llava_pope_test.jsonl)",
    "vqa": "question_file (jsonl: question_id, image, text), annotation_file (answers) and image_root",
    "mc": "question_file (jsonl or MMBench tsv); image_root when items name image files",
    "text_mc": "question_file (MMLU csv, a directory of them, or jsonl)",
    "vqav2": "question_file (v2_OpenEnded_mscoco_*_questions.json), image_root (COCO val2014/ or "
    "test2015/); annotation_file (v2_mscoco_val2014_annotations.json) for val accuracy",
    "vizwiz": "annotation_file (Annotations/val.json) and image_root (val/)",
    "mmbench_en": "question_file (mmbench_dev_20230712.tsv)",
    "mmbench_cn": "question_file (mmbench_dev_cn_20231003.tsv)",
    "mme": "annotation_dir (MME_Benchmark_release_version/)",
    "mmvp": "question_file (Questions.csv) and image_root (MMVP Images/)",
    "ocrbench": "annotation_file (OCRBench.json) and image_root (OCRBench_Images/)",
    "seedbench": "annotation_file (SEED-Bench.json) and image_root (SEED-Bench-image/)",
    "mmmu": "annotation_dir (the MMMU/ folder of <Subject>/validation-*.parquet)",
    "scienceqa": "question_file (problems.json), annotation_file (pid_splits.json) and image_root "
    "(images/test/)",
    "coco_caption": "annotation_file (captions_val2014.json or a Karpathy split) and image_root",
    "mm_vet": "annotation_file (mm-vet.json) and image_root (mm-vet/images/)",
    "llava_wild": "question_file (questions.jsonl), context_file (context.jsonl), annotation_file "
    "(answers_gpt4.jsonl) and image_root (images/)",
}


class JudgeSettings(Strict):
    """The GPT judge of MM-Vet / LLaVA-Bench (an OpenAI-compatible endpoint); unset fields come from
    SEAGRID_JUDGE_URL / SEAGRID_JUDGE_MODEL / SEAGRID_JUDGE_CACHE. The key is only read from the
    environment variable `api_key_env`, never from the spec."""

    base_url: str | None = Field(None, description="the API root, e.g. https://api.openai.com/v1")
    model: str | None = Field(None, description="e.g. gpt-4-0613 (MM-Vet's), gpt-4-0314 (LLaVA-Bench's)")
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    cache_dir: str | None = Field(
        None, description="every judgement cached here (default results/judge_cache)"
    )


class BenchmarkConfig(Strict):
    """One benchmark: what kind of scoring, where its files are, and when it runs.

    `name` labels its metrics (`eval/<name>...`) and report columns. `when` None means: text_mc after
    both stages (language retention: after stage 1 the LLM is untouched, so that is the "before"
    number), every other kind after the trial's last stage only.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    kind: BenchmarkKind
    source: Literal["synthetic", "files"] = "synthetic"
    question_file: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    annotation_file: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    annotation_dir: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    image_root: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    context_file: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    splits: list[PopeSplit] = Field(
        default_factory=lambda: list[PopeSplit](["adversarial", "popular", "random"]), min_length=1
    )
    vqa_metric: Literal["vqa", "exact"] = Field(
        "vqa", description="vqa: the official 10-annotator accuracy; exact: normalised exact match (GQA)"
    )
    mc_mode: Literal["loglik", "generate"] = "loglik"
    max_samples: int | None = Field(None, ge=1, description="first N items (per split for POPE)")
    prompt: str | None = Field(
        None, description="user-turn format with {question}; default: the file's text as LLaVA uses it"
    )
    when: list[Stage] | None = None
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        json_schema_extra=IDENTITY_IF_SET,
        description="official kinds: answer length (default per kind: 16 short answers and letters, "
        "64 captions, 1024 MM-Vet / LLaVA-Bench); other kinds use evaluation.max_new_tokens",
    )
    # Where the judge runs is infrastructure; the judge model is logged beside the judged metrics.
    judge: JudgeSettings | None = Field(None, json_schema_extra=NOT_IDENTITY)
    submission: bool = Field(
        False,
        json_schema_extra=IDENTITY_IF_SET,
        description="also write the answer file the benchmark's evaluation server takes (vqav2, vizwiz: "
        "JSON; mmbench_en/cn: xlsx) to the evaluation's submissions/<name>.<ext>; on a split without "
        "answers (VQAv2 test-dev, VizWiz test, MMBench test) that file is the result and the metrics are NaN",
    )

    @model_validator(mode="after")
    def _check_official(self) -> BenchmarkConfig:
        if self.kind not in OFFICIAL_KINDS:
            if self.max_new_tokens is not None or self.judge is not None:
                raise ValueError(
                    f"benchmark '{self.name}': max_new_tokens and judge are for the official kinds; kind "
                    f"'{self.kind}' uses evaluation.max_new_tokens and no judge: drop them"
                )
            return self._check_submission()
        if self.source == "synthetic" and self.kind not in OFFICIAL_SYNTHETIC:
            raise ValueError(
                f"benchmark '{self.name}': kind '{self.kind}' has no synthetic set; set source: files and "
                f"{_FILE_HELP[self.kind]}"
            )
        if self.prompt is not None:
            raise ValueError(
                f"benchmark '{self.name}': kind '{self.kind}' asks with its official prompt; drop prompt"
            )
        if self.judge is not None and self.kind not in JUDGED_KINDS:
            raise ValueError(f"benchmark '{self.name}': kind '{self.kind}' is not judged; drop judge")
        return self._check_submission()

    def _check_submission(self) -> BenchmarkConfig:
        if self.submission and self.kind not in SUBMISSION_KINDS:
            raise ValueError(
                f"benchmark '{self.name}': kind '{self.kind}' has no evaluation server answer file; drop "
                f"submission (kinds with one: {', '.join(SUBMISSION_KINDS)})"
            )
        return self

    @model_validator(mode="after")
    def _check(self) -> BenchmarkConfig:
        given = [f for f in FILE_FIELDS if getattr(self, f) is not None]
        if self.source == "synthetic":
            if given:
                raise ValueError(
                    f"benchmark '{self.name}': {', '.join(given)} given but source is 'synthetic' "
                    "(files are generated); set source: files to read your own files, or drop them"
                )
        else:
            missing = [f for f in REQUIRED_FILES[self.kind] if getattr(self, f) is None]
            if missing:
                raise ValueError(
                    f"benchmark '{self.name}': source 'files' with kind '{self.kind}' needs "
                    f"{', '.join(missing)}; set {_FILE_HELP[self.kind]}"
                )
            allowed = set(REQUIRED_FILES[self.kind]) | set(OPTIONAL_FILES.get(self.kind, ()))
            extra = [f for f in given if f not in allowed]
            if extra:
                raise ValueError(
                    f"benchmark '{self.name}': kind '{self.kind}' does not read {', '.join(extra)}; "
                    f"it reads {_FILE_HELP[self.kind]}"
                )
        if self.prompt is not None and "{question}" not in self.prompt:
            raise ValueError(
                f"benchmark '{self.name}': prompt {self.prompt!r} has no {{question}} placeholder; "
                "write e.g. '{question}\\nAnswer with a single word.'"
            )
        if self.when is not None and not self.when:
            raise ValueError(
                f"benchmark '{self.name}': when is empty, so it never runs; list after_stage1 and/or "
                "after_stage2, or leave it unset for the default"
            )
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"benchmark '{self.name}': splits {self.splits} repeat a split")
        return self

    def identity_exclude(self) -> set[str]:
        """Settings another kind would read do not change this benchmark's result."""
        unused = {"splits"} if self.kind != "pope" else set()
        if self.kind != "vqa":
            unused.add("vqa_metric")
        if self.kind not in ("mc", "text_mc"):
            unused.add("mc_mode")
        return unused

    def runs_after(self, stage: str, final: bool) -> bool:
        """Whether this benchmark runs when `stage` ("stage1"/"stage2") has just finished."""
        if self.when is None:
            return final or self.kind == "text_mc"
        return f"after_{stage}" in self.when


class DiagnosticsConfig(Strict):
    """Alignment diagnostics (REFERENCE.md section 5) on a held-out caption set.

    source "synthetic": the held-out set of the synthetic evaluation world, ground-truth words per
    patch (no label extraction). "files": a LLaVA-format JSON (first gpt turn = caption) with its
    image root; label_store (a finished SEA label store on the same patch grid) enables label recall,
    words_file (one word per line) gives the nearest-word list when there is no store.
    """

    every_steps: int | None = Field(
        None, ge=1, json_schema_extra=NOT_IDENTITY, description="stage-1 curve: diagnostics every N steps"
    )
    heldout_samples: int = Field(64, ge=1)
    pictures: bool = Field(True, json_schema_extra=NOT_IDENTITY)
    tacs_k: int = Field(10, ge=1)
    source: Literal["synthetic", "files"] = "synthetic"
    json_path: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    image_root: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    label_store: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    words_file: str | None = Field(None, json_schema_extra=NOT_IDENTITY)

    @model_validator(mode="after")
    def _check(self) -> DiagnosticsConfig:
        paths = [f for f in ("json_path", "image_root", "label_store", "words_file") if getattr(self, f)]
        if self.source == "synthetic" and paths:
            raise ValueError(
                f"diagnostics: {', '.join(paths)} given but source is 'synthetic'; set source: files "
                "to use your own held-out captions, or drop them"
            )
        if self.source == "files":
            missing = [f for f in ("json_path", "image_root") if getattr(self, f) is None]
            if missing:
                raise ValueError(
                    f"diagnostics: source 'files' needs {', '.join(missing)} (a LLaVA-format caption "
                    "JSON and its image root)"
                )
        return self


class SyntheticEvalConfig(Strict):
    """The synthetic evaluation world (core.data.synthetic_eval); match the training set's drawing."""

    seed: int = 0
    image_size: int = Field(128, ge=24)
    max_objects: int = Field(3, ge=1, le=8)
    num_images: int = Field(32, ge=1)
    num_text_questions: int = Field(48, ge=1)


class EvalConfig(Strict):
    """The evaluation step of a trial: benchmarks, diagnostics and generation settings."""

    enabled: bool = False
    benchmarks: list[BenchmarkConfig] = []
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    synthetic: SyntheticEvalConfig = Field(default_factory=SyntheticEvalConfig)
    batch_size: int = Field(8, ge=1, json_schema_extra=NOT_IDENTITY)
    max_new_tokens: int = Field(16, ge=1)
    image_mode: Literal["pad", "square"] = Field(
        "pad", description="image preprocessing for benchmarks (LLaVA-1.5 evaluates padded images)"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> EvalConfig:
        names = [b.name for b in self.benchmarks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"benchmarks: names {repeated} repeat; each name labels its own metrics, make them unique"
            )
        return self

    def needs_synthetic(self) -> bool:
        """Whether any benchmark or the diagnostics read the synthetic evaluation set."""
        return self.diagnostics.source == "synthetic" or any(b.source == "synthetic" for b in self.benchmarks)
