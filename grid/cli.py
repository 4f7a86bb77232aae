"""The `seagrid` command line: plan and run grids."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from grid.memory import UnfitTrialError
from grid.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 bad spec, 1 failed trials, 0 all done)."""
    parser = argparse.ArgumentParser(prog="seagrid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan", help="print the trials of a spec and their status; runs nothing")
    p_plan.add_argument("spec")
    p_run = sub.add_parser("grid", help="run every trial of a spec that is not done yet")
    p_run.add_argument("spec")
    p_labels = sub.add_parser("labels", help="build (or reuse) the SEA label stores a spec's trials need")
    p_labels.add_argument("spec")
    p_report = sub.add_parser("report", help="result tables and plots of a spec's runs (Markdown, CSV, PNG)")
    p_report.add_argument("spec")
    p_report.add_argument("--rows", help="two config paths to group by (default: method.name,model.llm)")
    p_report.add_argument("--columns", help="metrics to show (default: every eval/<name> headline metric)")
    args = parser.parse_args(argv)
    # Tables are wide; when output is piped (no terminal width to read) don't squeeze them to 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=220)
    try:
        if args.command == "plan":
            from grid.plan import print_plan

            print_plan(args.spec, console)
            return 0
        if args.command == "labels":
            return build_labels(args.spec, console)
        if args.command == "report":
            return report(args, console)
        from grid.run import run_grid

        _, result = run_grid(args.spec, console=console)
        return 1 if result.failed else 0
    except (SpecError, UnfitTrialError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


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
    from core.labels.prepare import prepare_labels
    from core.pipeline import label_steps
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
    for path, tid in done.items():
        console.print(f"labels for {tid} (and trials like it): {path}", soft_wrap=True, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
