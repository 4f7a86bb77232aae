"""`seagrid data` for the official benchmark kinds: each family's files, where to get them, its own reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config.evaluation import OFFICIAL_KINDS

# The family's DataFile kind of path, by BenchmarkConfig field.
_FIELD_KIND = {
    "question_file": "file",
    "annotation_file": "file",
    "context_file": "file",
    "annotation_dir": "dir",
    "image_root": "images",
}


def is_official(bench: Any) -> bool:
    return bench.kind in OFFICIAL_KINDS


def official_needs(bench: Any, make: Callable[..., Any]) -> list[Any]:
    """One need per family file the benchmark names (its role, usual name and source in the label and
    the hint), the first carrying the family's reader; coco_caption also needs Java."""
    from core.evaluation.benchmarks.official import ROLE_FIELDS, family_of

    out: list[Any] = []
    for f in family_of(bench.kind).files:
        name = ROLE_FIELDS[f.role]
        value = getattr(bench, name)
        if value is None:
            continue  # optional (VQAv2 test-dev has no annotations); the config requires the others
        path = Path(value).expanduser()
        kind = _FIELD_KIND[name]
        if kind == "file" and path.is_dir():
            kind = "dir"  # MMMU-like folders given where a file is usual
        label = f"benchmark {bench.name} {name} ({f.role}: {f.name})"
        reads = official_reader(bench) if not out else None
        out.append(make(kind, path, label, "", field=name, reads=reads, hint=f"{f.name} from {f.source}"))
    if bench.kind == "coco_caption":
        hint = "a Java runtime on PATH, e.g. `apt-get install default-jre-headless`"
        out.append(make("java", Path("java"), f"benchmark {bench.name}: Java (pycocoevalcap)", "", hint=hint))
    return out


def official_reader(bench: Any) -> Callable[[], str]:
    """The benchmark read by the family's own reader, as the evaluation reads it."""

    def reads() -> str:
        from core.evaluation.benchmarks import bench_files
        from core.evaluation.benchmarks.official import family_of, role_paths
        from core.evaluation.scorers import ScorerInputError

        try:
            samples = family_of(bench.kind).read(role_paths(bench.kind, bench_files(bench, None)))
        except ScorerInputError as err:
            raise ValueError(str(err)) from None
        return f"{len(samples)} samples, as evaluation reads them ({family_of(bench.kind).name} reader)"

    return reads


def java_line() -> tuple[bool, str]:
    """Whether pycocoevalcap's Java is on PATH, and the line saying so."""
    from core.evaluation.scorers.captions import require_java
    from core.evaluation.scorers.common import ScorerInputError

    try:
        require_java()
    except ScorerInputError as err:
        return False, str(err)
    return True, "java found on PATH"
