"""Trial configuration: the typed, validated description of what a trial computes (a leaf package)."""

from core.config.base import NOT_IDENTITY, Strict, check_registry, did_you_mean
from core.config.evaluation import BenchmarkConfig, DiagnosticsConfig, EvalConfig, SyntheticEvalConfig
from core.config.identity import canonical_json, content_hash, flatten, identity_dict
from core.config.trial import (
    METHODS,
    METHODS_WITH_BASIC,
    METHODS_WITH_SEA,
    BasicConfig,
    DataConfig,
    DatasetConfig,
    DeepSpeedSettings,
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
    "METHODS",
    "METHODS_WITH_BASIC",
    "METHODS_WITH_SEA",
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
