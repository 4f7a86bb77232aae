"""Trial configuration: the typed, validated description of what a trial computes (a leaf package)."""

from core.config.base import IDENTITY_IF_SET, NOT_IDENTITY, Strict, check_registry, did_you_mean
from core.config.evaluation import BenchmarkConfig, DiagnosticsConfig, EvalConfig, SyntheticEvalConfig
from core.config.identity import canonical_json, content_hash, flatten, identity_dict
from core.config.methods import METHOD_PARTS, METHODS, METHODS_WITH_BASIC, METHODS_WITH_SEA, PARTS
from core.config.trial import (
    BasicConfig,
    DataConfig,
    DatasetConfig,
    DeepSpeedSettings,
    ExportConfig,
    MethodConfig,
    ModelConfig,
    ResourcesConfig,
    SeaConfig,
    Stage2Config,
    StageConfig,
    SyntheticDataConfig,
    TrialConfig,
    WordsConfig,
)

__all__ = [
    "IDENTITY_IF_SET",
    "METHODS",
    "METHODS_WITH_BASIC",
    "METHODS_WITH_SEA",
    "METHOD_PARTS",
    "PARTS",
    "NOT_IDENTITY",
    "BasicConfig",
    "BenchmarkConfig",
    "DataConfig",
    "DatasetConfig",
    "DeepSpeedSettings",
    "DiagnosticsConfig",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "ExportConfig",
    "ResourcesConfig",
    "SeaConfig",
    "Stage2Config",
    "StageConfig",
    "Strict",
    "SyntheticDataConfig",
    "SyntheticEvalConfig",
    "TrialConfig",
    "WordsConfig",
    "canonical_json",
    "check_registry",
    "content_hash",
    "did_you_mean",
    "flatten",
    "identity_dict",
]
