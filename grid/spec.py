"""Experiment specs: a base trial config, the grid around it, where results go; loaded from YAML
(data only, never code) with errors that name the YAML path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from core.config import (  # noqa: F401  (re-exported: grid code and tests read them from here)
    METHODS,
    METHODS_WITH_BASIC,
    METHODS_WITH_SEA,
    NOT_IDENTITY,
    BasicConfig,
    DatasetConfig,
    MethodConfig,
    ModelConfig,
    SeaConfig,
    Stage2Config,
    StageConfig,
    Strict,
    TrialConfig,
    did_you_mean,
)
from grid.search_spec import SearchConfig
from grid.spec_errors import SpecError, describe_errors, with_yaml_hints  # noqa: F401  (re-exported, as above)
from grid.yaml_strict import StrictYAMLError, load_strict


class GridConfig(Strict):
    """How the base config varies: product axes, zipped groups, extra and dropped cells."""

    axes: dict[str, list[Any]] = {}
    zip: list[dict[str, list[Any]]] = []
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []


class OutputConfig(Strict):
    """Where results go; none of this changes a trial's result."""

    root: str = "results"
    steps_root: str | None = Field(
        None, description="where steps (label stores, stages, evaluations) live; default <root>/steps"
    )
    tracking_uri: str | None = None
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_trials_unconfirmed: int = Field(
        500, ge=1, description="`seagrid grid` starts more trials than this only with --yes"
    )
    watchdog_minutes: float | None = Field(
        120,
        gt=0,
        description="when no running trial has reported for this long, end the Tune run and resume it in a "
        "fresh Ray session from the checkpoints (a label or evaluation step reports nothing while it runs: "
        "keep this above its length); null: never",
    )


def steps_root(output: OutputConfig) -> Path:
    """The steps root of a spec's output settings (absolute: Ray workers may run elsewhere)."""
    root = output.steps_root or str(Path(output.root) / "steps")
    return Path(root).expanduser().resolve()


class ExperimentSpec(Strict):
    """A whole experiment: a base trial, the grid around it, and where results go."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)
    description: str = ""
    base: TrialConfig = Field(default_factory=TrialConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    search: SearchConfig | None = Field(None, description="a Tune search per grid cell (`seagrid tune`)")


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    """Validate already-loaded YAML data as an experiment spec."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping with at least 'name'; got {type(data).__name__}")
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        lines = with_yaml_hints(describe_errors(err, ExperimentSpec), err)
        raise SpecError(f"{source}: invalid spec:\n  " + "\n  ".join(lines)) from None
    if spec.search is not None:
        from grid.expand import expand
        from grid.search_spec import SearchSpecError, check_search

        try:
            check_search(spec, source, expand(spec, source))
        except SearchSpecError as err:
            raise SpecError(str(err)) from None
    return spec


def read_spec_text(path: Path) -> str:
    """A spec file's text; a directory, an unreadable file or one not in UTF-8 is a SpecError."""
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; give the path of a spec file such as {path}/smoke.yaml")
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpecError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the spec as UTF-8"
        ) from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec ({err.strerror})") from None


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a YAML spec: YAML 1.2 scalars, duplicate keys refused (grid.yaml_strict); the
    loader builds plain data only, so nothing runs."""
    path = Path(path)
    text = read_spec_text(path)
    try:
        data = load_strict(text)
    except StrictYAMLError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, str(path))
