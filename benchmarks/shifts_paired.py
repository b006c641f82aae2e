"""Paired differences of a robustness report: each method minus plain, run by run.

Why: the tables of ``mirrorgrad robustness`` give each method's ``mean ± std`` over its
runs (and perturbation seeds). Those spreads include what the methods' runs share, the
seed's split of luck and the perturbed dataset, so two overlapping cells can still hide a
difference that every seed shows. Since 2026-12-08 the command appends the paired table
itself (:func:`~mirrorgrad_jax.analysis.shifts.paired_differences`); this script makes the
same table from a JSON report written before that, from its per-run ``numbers``.

Usage:
  python benchmarks/shifts_paired.py benchmarks/results/shifts_extreme_vbpr_synthetic.json [MORE.json ...]
  [--baseline plain]

Prints, per report, the markdown table: the clean metric, ``lambda_max`` (when measured) and
every retention column, each label minus the baseline, mean ± sample standard deviation over
the runs, ``(k/n)`` runs above.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from mirrorgrad_jax.analysis.shifts import paired_differences


def paired_table(report: dict, baseline: str | None = None) -> str:
    """The paired table of one JSON report of ``mirrorgrad robustness`` (or ``flatness``)."""
    # The report writes a NaN (a retention whose clean metric is 0) as null.
    numbers = {label: {c: [math.nan if v is None else v for v in vs] for c, vs in cols.items()} for label, cols in report["numbers"].items()}
    first = next(iter(numbers.values()))
    metric = next(iter(first))
    retention = [f"{shift['kind']} {level:g}" for shift in report.get("shifts", []) for level in shift["levels"]]
    columns = [metric, *(["lambda_max"] if "lambda_max" in first else []), *retention]
    runs = {len(v) for v in report["train"].values()}
    if len(runs) != 1:
        raise ValueError(f"the labels have different numbers of runs ({sorted(runs)}): nothing to pair")
    return paired_differences(numbers, columns, runs=runs.pop(), baseline=baseline, fmt=lambda name: ".4g" if name == "lambda_max" else ".4f")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="JSON reports of mirrorgrad robustness")
    parser.add_argument("--baseline", default=None, help="the label subtracted (default: the report's first, plain)")
    args = parser.parse_args(argv)
    tables = []
    for path in args.reports:
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
            tables.append(f"{path}\n\n{paired_table(report, args.baseline)}\n")
        except (OSError, ValueError, KeyError, TypeError, StopIteration) as err:
            print(f"shifts_paired.py: error: {path}: {err.__class__.__name__}: {err}", file=sys.stderr)
            return 2
    print("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
