"""``python -m scripts.report <runs-dir> [--target LOSS] [--baseline adamw] [--out DIR] [--wandb]``"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.report.write import write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Iterations and wall-clock to a target loss")
    ap.add_argument("runs_dir")
    ap.add_argument(
        "--target",
        type=float,
        default=None,
        help="target eval loss (default: the baseline's final loss)",
    )
    ap.add_argument("--baseline", default="adamw")
    ap.add_argument("--out", default=None, help="output directory (default: <runs_dir>/report)")
    ap.add_argument(
        "--wandb",
        action="store_true",
        help="upload the table and plots to wandb (WANDB_MODE applies)",
    )
    args = ap.parse_args(argv)
    if not Path(args.runs_dir).is_dir():
        print(f"error: {args.runs_dir} is not a directory of runs", file=sys.stderr)
        return 2
    from scripts.report.load import load_runs

    present = sorted({r.optimizer for r in load_runs(args.runs_dir)})
    if present and args.baseline not in present:
        print(
            f"error: --baseline {args.baseline}: no such optimizer among the runs "
            f"(present: {', '.join(present)})",
            file=sys.stderr,
        )
        return 2
    res = write_report(args.runs_dir, args.out, args.target, args.baseline, wandb_upload=args.wandb)
    for name, table in res.headline.items():
        print(f"\n{name}\n{table}")
        for v in res.verdicts[name]:
            print(v)
    print(f"\nreport: {res.out / 'report.md'}\ndashboard: {res.dashboard}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
