"""One home per concept: the method registry is the one list of methods, parts and their builders."""

from __future__ import annotations


def test_the_method_registry_is_the_one_list_of_methods():
    # MethodConfig.name's allowed values, the derived lists and the objective builders agree with it.
    import typing

    from core.config import METHOD_PARTS, METHODS, METHODS_WITH_BASIC, METHODS_WITH_SEA, PARTS, MethodConfig
    from core.methods.build import PART_BUILDERS

    assert typing.get_args(MethodConfig.model_fields["name"].annotation) == METHODS == tuple(METHOD_PARTS)
    assert METHODS_WITH_SEA == ("sea", "sea+basic") and METHODS_WITH_BASIC == ("basic", "sea+basic")
    assert set(PART_BUILDERS) == set(PARTS) == {p for parts in METHOD_PARTS.values() for p in parts}


def test_every_benchmark_kind_has_one_entry_in_the_benchmark_registry():
    import typing

    from core.config.evaluation import REQUIRED_FILES, BenchmarkConfig
    from core.evaluation.benchmarks import BENCHMARKS

    kinds = typing.get_args(BenchmarkConfig.model_fields["kind"].annotation)
    assert set(BENCHMARKS) == set(kinds) == set(REQUIRED_FILES)


def test_a_benchmark_reporting_other_metrics_than_it_declares_fails(tmp_path):
    import pytest

    from core.config import BenchmarkConfig
    from core.evaluation.benchmarks import BenchFiles, BenchmarkKind, RunContext, metric_names
    from core.evaluation.benchmarks.registry import _scored

    bench = BenchmarkConfig(name="toy", kind="vqa")
    declared = BenchmarkKind(
        read=lambda b, f: [1, 2],
        ask=lambda ctx, b, items: ["a", "b"],
        score=lambda b, items, outs: ({"": 0.5, "extra": 1.0}, []),
        synthetic=lambda d: BenchFiles(),
        metric_names=lambda b: ("",),
    )
    ctx = RunContext(None, None, "plain")
    with pytest.raises(AssertionError, match="extra"):
        _scored(declared, ctx, bench)
    assert metric_names(bench) == ["eval/toy"]
    assert metric_names(BenchmarkConfig(name="p", kind="pope", splits=["random"]))[:3] == [
        "eval/p",
        "eval/p/yes_ratio",
        "eval/p/random/accuracy",
    ]
