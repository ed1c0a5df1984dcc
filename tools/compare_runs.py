#!/usr/bin/env python
"""Compare MLflow runs of one experiment: differing params, final/best metrics, curves.

    python tools/compare_runs.py --experiment samft --filter "params.loss.name = 'sam'" \
        --metrics loss/total,val/iou --out outputs/compare

Prints the table and writes report.md, runs.csv and curves/*.png into --out.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"params.loss.name = 'sam'\"")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    parser.add_argument("--metrics", default=None, help="comma-separated metric keys (default: all but system/*)")
    parser.add_argument("--maximize", default=None,
                        help="metrics whose best is the maximum (for metrics samft does not declare)")
    parser.add_argument("--minimize", default=None,
                        help="metrics whose best is the minimum (for metrics samft does not declare)")
    parser.add_argument("--max-runs", type=int, default=100, help="newest runs compared (default 100)")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md, runs.csv and curves/")
    args = parser.parse_args(argv)

    from samft.tracking.compare import CompareError, compare_runs, format_table, write_report

    try:
        comparison = compare_runs(
            args.experiment, filter_string=args.filter, tracking_uri=args.tracking_uri,
            metrics=_names(args.metrics) or None, max_runs=args.max_runs,
            maximize=_names(args.maximize), minimize=_names(args.minimize))
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(comparison))
    if args.out is not None:
        written = write_report(comparison, args.out)
        print(f"\nWrote {written['markdown']}, {written['csv']} and {len(written) - 2} curve plots.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
