"""The `seagrid` command line: plan and run grids."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from grid.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 bad spec, 1 failed trials, 0 all done)."""
    parser = argparse.ArgumentParser(prog="seagrid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan", help="print the trials of a spec and their status; runs nothing")
    p_plan.add_argument("spec")
    p_run = sub.add_parser("grid", help="run every trial of a spec that is not done yet")
    p_run.add_argument("spec")
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.command == "plan":
            from grid.plan import print_plan

            print_plan(args.spec, console)
            return 0
        from grid.run import run_grid

        _, result = run_grid(args.spec, console=console)
        return 1 if result.failed else 0
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
