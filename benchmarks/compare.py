"""Compare run folders side by side: a Markdown table (stdout) and, optionally, a plot.

    python benchmarks/compare.py runs/*
    python benchmarks/compare.py runs/* --out report.md --plot compare.png

One row per run (method, K, hypergradient, lambda, seed, final search validation accuracy per
learner, test error when evaluated, parameters, search cost, seconds per step), then one row
per setting with the mean and std over its seeds. Folders that are not run folders are skipped
with a warning on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgl_betty.errors import UserError
from sgl_betty.tracking import atomic_write_bytes
from sgl_betty.tracking.compare import compare_runs, markdown_report, plot_comparison


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compare.py", description="Compare sgl-betty run folders (search and evaluation runs)."
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, e.g. runs/*")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--plot", type=Path, help="write a comparison plot (PNG) to this file")
    args = parser.parse_args(argv)

    comparison = compare_runs(args.runs)
    for warning in comparison.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not comparison.runs:
        print("error: none of the given folders is a finished run folder", file=sys.stderr)
        return 2
    report = markdown_report(comparison)
    sys.stdout.write(report)
    try:
        if args.out is not None:
            atomic_write_bytes(args.out, report.encode("utf-8"))
            print(f"report: {args.out}", file=sys.stderr)
        if args.plot is not None:
            plot_comparison(comparison, args.plot)
            print(f"plot: {args.plot}", file=sys.stderr)
    except UserError as error:  # a path that cannot be written
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
