"""The `seagrid` command line: plan, run and report experiment grids (the justfile's recipes call it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from grid.export_cmd import add_export_parser
from grid.lmms import add_lmms_parser
from grid.memory import UnfitTrialError
from grid.spec import SpecError

DESCRIPTION = """\
Experiment grids for token-level vision-language alignment (LLaVA-1.5, SEA, BASIC) on Ray and MLflow.
A spec (YAML) names a base trial config and the axes to vary; every command takes its path.
Exit codes: 0 success, 1 a trial failed, 2 a bad spec or argument."""

SPEC_HELP = "path of the experiment spec (YAML), e.g. experiments/smoke.yaml"


def _command(sub: Any, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that takes a SPEC, its description laid out as written."""
    command = sub.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    command.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error (for a bug report)"
    )
    return command


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (argparse then names the option in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; give a number of images >= 1")
    return value


def _add_plan(sub: Any) -> None:
    p_plan = _command(
        sub,
        "plan",
        help="print the trials of a spec, their status and cost; runs nothing",
        description="Expand SPEC into its trials and print each one's id, axis values, status in MLflow "
        "(new/done/failed/running/killed), resources and estimates (visual tokens, GPUs, ZeRO stages, "
        "GPU-hours). Starts nothing and writes nothing.",
    )
    p_plan.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default, for reading), json (a list with one object per trial) or csv (one line per "
        "trial, nested fields as dotted columns such as estimates.gpu_hours)",
    )


def _add_grid(sub: Any) -> None:
    p_run = _command(
        sub,
        "grid",
        help="run every trial of a spec that is not done yet",
        description="Run every trial of SPEC whose latest MLflow run is not FINISHED (Ray Tune schedules "
        "them, Ray Train runs each stage), log everything to MLflow and show one table of the trials "
        "updated in place (plain lines when stdout is not a terminal). Ray's and Tune's own output goes to "
        "<output.root>/logs/<grid>-<time>.log.",
    )
    p_run.add_argument(
        "--yes",
        action="store_true",
        help="start the run even when it has more trials than output.max_trials_unconfirmed (default 500)",
    )
    p_run.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's and Tune's own output (start-up, worker logs, warnings) on the terminal instead "
        "of writing it to the log file",
    )


def _add_tune(sub: Any) -> None:
    p_tune = _command(
        sub,
        "tune",
        help="run (or resume) the Ray Tune search of a spec's `search:` block, one per grid cell",
        description="Search the space of SPEC's `search:` block around each grid cell (trials are grid "
        "trials: same steps, same MLflow runs, nested under one parent run per search). An interrupted "
        "search resumes when the command runs again. At the end: the trials sorted by the metric, the "
        "best config as experiments/best/<name>.yaml, a plot of the metric against each parameter.",
    )
    p_tune.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output")


def _add_labels(sub: Any) -> None:
    _command(
        sub,
        "labels",
        help="build (or reuse) the SEA label stores a spec's trials need",
        description="Build the SEA word-label stores of every trial of SPEC that uses SEA, in this process "
        "with a progress bar (trials sharing a store build it once); `seagrid grid` would otherwise build "
        "them inside the trials.",
    )


def _add_data(sub: Any) -> None:
    p_data = _command(
        sub,
        "data",
        help="check the data a spec needs is on disk, and say where to get what is missing",
        description="List SPEC's dataset files (stage JSON + image roots, benchmark files, SEA word files), "
        "check them (counts, sizes, JSON parses, a sample of image references resolve and decode) and "
        "print what to put where for what is missing. Exit 0 when everything is there, 1 otherwise.",
    )
    p_data.add_argument(
        "--sample", type=positive_int, default=16, help="images checked per dataset (default 16)"
    )
    p_data.add_argument(
        "--download",
        action="store_true",
        help="fetch missing hub datasets first (huggingface_hub, resumable)",
    )


def _add_report(sub: Any) -> None:
    p_report = _command(
        sub,
        "report",
        help="result tables and plots of a spec's runs (Markdown, CSV, PNG)",
        description="Read SPEC's runs from MLflow and write a paper-style table (mean ± std over the axes "
        "not in the rows, delta to the llava baseline) and plots to <output.root>/reports/<name>/, print "
        "the table and log the files to the grid's parent run.",
    )
    p_report.add_argument(
        "--rows",
        metavar="PATHS",
        help="comma-separated config paths to group rows by (default: method.name,model.llm)",
    )
    p_report.add_argument(
        "--columns",
        metavar="METRICS",
        help="comma-separated metrics to show (default: every eval/<name> headline metric and the "
        "alignment diagnostics diag/label_recall, diag/tacs, diag/modality_gap that the runs have)",
    )


def _add_export(sub: Any) -> None:
    add_export_parser(sub, _command)


def _add_lmms(sub: Any) -> None:
    add_lmms_parser(sub, _command)


# One adder per command, in the order `seagrid --help` lists them.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_plan,
    _add_grid,
    _add_tune,
    _add_labels,
    _add_data,
    _add_report,
    _add_export,
    _add_lmms,
)


def build_parser() -> argparse.ArgumentParser:
    """Every command and option, with the help `seagrid --help` and `seagrid COMMAND --help` print."""
    parser = argparse.ArgumentParser(
        prog="seagrid", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


# Errors a user's spec, files or settings cause: one line and exit 2 (a traceback only with --debug).
USER_ERRORS: tuple[type[BaseException], ...] = (SpecError, UnfitTrialError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 bad spec, 1 failed trials, 0 all done)."""
    args = build_parser().parse_args(argv)
    from grid.console import console_for

    console = console_for(sys.stdout)
    try:
        return _dispatch(args, console)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        if not isinstance(err, SpecError | UnfitTrialError):
            print(f"(seagrid {args.command} --debug ... shows where it happened)", file=sys.stderr)
        return 2
    except Exception as err:  # MLflow's and Ray's own errors: still no traceback unless asked for
        if args.debug or type(err).__module__.split(".")[0] not in ("mlflow", "ray", "yaml", "pydantic"):
            raise
        print(f"error: {type(err).__name__}: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error's message; a SpecError keeps its lines (one finding each)."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        # "[Errno 20] Not a directory: '...'" says neither which setting nor what to do
        return f"{err.filename}: {err.strerror.lower()}; check the spec's paths (output.root, data files)"
    text = str(err) or type(err).__name__
    return text if isinstance(err, SpecError) else " ".join(text.split())


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "plan":
        from grid.plan_summary import plan_command

        plan_command(args.spec, console, fmt=args.format, out=sys.stdout)
        if args.format == "table":
            print_search_plan(args.spec, console)
        return 0
    if args.command == "tune":
        from grid.search import run_search

        outcomes = run_search(args.spec, console=console, verbose=args.verbose)
        if any(o.interrupted for o in outcomes):
            return 130
        return 1 if any(r["status"] == "failed" for o in outcomes for r in o.rows) else 0
    if args.command == "labels":
        return build_labels(args.spec, console)
    if args.command == "data":
        from grid.data_check import run_data_check

        return run_data_check(args.spec, console, sample=args.sample, fetch=args.download)
    if args.command == "report":
        return report(args, console)
    if args.command == "export":
        from grid.export_cmd import run_export

        return run_export(args, console)
    if args.command == "lmms":
        from grid.lmms import run_lmms

        return run_lmms(args, console)
    from grid.run import run_grid

    _, result = run_grid(args.spec, console=console, verbose=args.verbose, confirmed=args.yes)
    if result.interrupted:
        return 130  # as a shell reports Ctrl-C; the rerun resumes
    return 1 if result.failed else 0


def print_search_plan(spec_path: str, console: Console) -> None:
    """A search spec's plan also shows its space and trial budget."""
    from grid.expand import expand
    from grid.spec import load_spec

    spec = load_spec(spec_path)
    if spec.search is not None:
        from grid.search import search_summary  # Ray Tune's imports: only for a search

        console.print(search_summary(spec, expand(spec, spec_path)), highlight=False)


def report(args: argparse.Namespace, console: Console) -> int:
    """`just report SPEC`: tables and plots under <output.root>/reports/<name>/, logged to the parent run."""
    from grid.report import DEFAULT_ROWS, build_report

    def split(text: str | None) -> list[str] | None:
        return [p.strip() for p in text.split(",") if p.strip()] if text else None

    build_report(
        args.spec, rows=split(args.rows) or DEFAULT_ROWS, columns=split(args.columns), console=console
    )
    return 0


def build_labels(spec_path: str, console: Console) -> int:
    """`just labels SPEC`: the label steps of every SEA trial, in this process, with a progress bar."""
    from core.pipeline import label_steps, prepare_labels
    from grid.expand import expand
    from grid.spec import load_spec, steps_root

    spec = load_spec(spec_path)
    trials = [t for t in expand(spec, spec_path) if label_steps(t.config)]
    if not trials:
        console.print(f"{spec.name}: no trial uses SEA; no labels to build")
        return 0
    root = steps_root(spec.output)
    done: dict[str, str] = {}
    for t in trials:
        parallel = t.config.method.sea.label_parallel
        path = prepare_labels(t.config, root, progress=True, parallel=parallel)
        done.setdefault(str(path), t.id)
    for store, tid in done.items():
        console.print(f"labels for {tid} (and trials like it): {store}", soft_wrap=True, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
