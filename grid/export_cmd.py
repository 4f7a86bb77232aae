"""`seagrid export`: finished trials of a grid as transformers LLaVA checkpoints, optionally pushed to the Hub."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from grid.spec import SpecError

EXPORTS_DIR = "exports"
TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class Finished:
    """A trial stage whose step finished: what `write_export` needs."""

    trial_id: str
    stage: str
    config: Any  # core.export.config.ExportStepConfig
    deps: dict[str, Path]
    built: Path | None = None  # the graph's export step output, when it finished: reused, not rebuilt


def add_export_parser(sub: Any, command: Any) -> None:
    """The `export` subcommand (`command` is grid.cli's SPEC-taking subparser factory)."""
    p = command(
        sub,
        "export",
        help="write finished trials as transformers LLaVA checkpoints (lmms-eval, vLLM, the Hub load them)",
        description="Export every finished trial of SPEC (or --trial) after its last stage (or --stage) as a "
        "directory LlavaForConditionalGeneration and AutoProcessor load as they are: bf16 safetensors, "
        "the image token added, the trial's tokenizer, chat template and image preprocessing, a model card. "
        "Written to <output.root>/exports/<trial id>/<stage>/ (or under --out). Encoders transformers "
        "has no LLaVA form for (open_clip towers) are refused with the reason.",
    )
    p.add_argument("--trial", metavar="ID", help="only this trial (its full id or its hash)")
    p.add_argument("--stage", choices=("stage1", "stage2"), help="the stage to export (default: the last)")
    p.add_argument(
        "--out", metavar="DIR", help="parent directory of the exports (default <output.root>/exports)"
    )
    p.add_argument(
        "--push",
        metavar="REPO_ID",
        help=f"upload the export to this Hub model repo (one trial; the token comes from ${TOKEN_ENV})",
    )


def finished_stages(spec_path: str, trial: str | None, stage: str | None) -> tuple[list[Finished], Path]:
    """The finished stages to export and the spec's default exports directory; SpecError for a user mistake."""
    from core.export.config import export_config
    from core.export.step import HF_DIR
    from core.pipeline import trial_steps
    from core.stages import STAGES, enabled_stages
    from core.steps import is_success
    from grid.expand import expand
    from grid.spec import load_spec, steps_root

    spec = load_spec(spec_path)
    trials = expand(spec, spec_path)
    if trial is not None:
        trials = [t for t in trials if trial in (t.id, t.hash)]
        if not trials:
            raise SpecError(
                f"--trial {trial}: no trial of {spec_path} has this id or hash; `seagrid plan` lists them"
            )
    root = steps_root(spec.output)
    found: list[Finished] = []
    for t in trials:
        steps = trial_steps(t.config)
        name = stage or enabled_stages(t.config)[-1].name
        if name not in steps.stages:
            raise SpecError(
                f"--stage {name}: trial {t.id} does not run it (its stages: {sorted(steps.stages)})"
            )
        step_dir = steps.stages[name].path(root)
        if not is_success(step_dir):
            continue
        deps = {name: step_dir}
        if name in steps.evals and is_success(steps.evals[name].path(root)):
            deps[f"eval-{name}"] = steps.evals[name].path(root)
        built = None
        if name in steps.exports and is_success(steps.exports[name].path(root)):
            built = steps.exports[name].path(root) / HF_DIR
        found.append(Finished(t.id, name, export_config(t.config, STAGES[name].name), deps, built))
    return found, Path(spec.output.root) / EXPORTS_DIR


def run_export(args: argparse.Namespace, console: Console) -> int:
    """`seagrid export`: 0 exported (and pushed), 2 a user mistake or a refused model, 1 an upload failed."""
    from core.export.step import place_export, write_export
    from core.export.support import ExportRefused, check_exportable
    from core.models.vision import get_encoder_spec

    token = os.environ.get(TOKEN_ENV) if args.push else None
    if args.push and not token:
        raise SpecError(f"--push needs a Hub token in ${TOKEN_ENV} (a write token from your Hub settings)")
    found, default_out = finished_stages(args.spec, args.trial, args.stage)
    if not found:
        raise SpecError(
            f"{args.spec}: no finished trial to export{f' ({args.trial})' if args.trial else ''}; run the grid first"
        )
    if args.push and len(found) != 1:
        raise SpecError(
            f"--push {args.push}: {len(found)} trials would go to one repo; choose one with --trial"
        )
    for item in found:  # every refusal before anything is written
        try:
            check_exportable(get_encoder_spec(item.config.model.encoder), item.config.model.adapter)
        except ExportRefused as err:
            raise SpecError(f"trial {item.trial_id}: cannot export: {err}") from None
    out_root = Path(args.out) if args.out else default_out
    written: list[Path] = []
    for item in found:
        target = out_root / item.trial_id / item.stage
        if item.built is not None:  # the trial's graph exported it already
            path, how = (
                place_export(item.built, target),
                f" (the grid's export step, {item.built.parent.name})",
            )
        else:
            path, how = write_export(item.config, item.deps, target), ""
        console.print(
            f"exported {item.trial_id} after {item.stage}: {path}{how}", soft_wrap=True, highlight=False
        )
        written.append(path)
    if args.push:
        return push(written[0], args.push, token or "", console)
    return 0


def push(path: Path, repo_id: str, token: str, console: Console) -> int:
    """Upload the export folder to `repo_id` (created private when new). A failure says why, with the
    token never shown, and leaves the local export as it is."""
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
        api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type="model")
    except Exception as err:  # any transport or Hub error: the message is what the user needs
        reason = f"{type(err).__name__}: {err}".replace(token, "***") if token else str(err)
        print(
            f"error: upload of {path} to {repo_id} failed ({reason.splitlines()[0] if reason else ''}); "
            f"the export is complete at {path}: check the network and ${TOKEN_ENV}, then rerun with --push",
            file=sys.stderr,
        )
        return 1
    console.print(f"pushed {path} to {repo_id}", soft_wrap=True, highlight=False)
    return 0
