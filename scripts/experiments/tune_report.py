"""``python -m scripts.tune_report <tune.out>`` (after ``scripts.tune``): ``tune.md`` and one
``sensitivity_<axis>.png`` per axis next to ``tune.json`` (the section itself:
:mod:`scripts.report.tuning`; ``scripts.report`` includes it when its runs directory holds
a tuner's output)."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.cli import wants_help
from scripts.report import tuning


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv, __doc__):
        return 0
    if not argv or not (Path(argv[0]) / "tune.json").exists():
        print("error: give the tuner's tune.out directory (with tune.json)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    missing = tuning.missing_runs(*tuning.load(out))
    if missing:  # a clean clone: tune.json is committed, the trials' runs are not
        print(
            f"error: {len(missing)} trial run directories this report reads are not here (e.g. "
            f"{missing[0]}): {out / 'tune.md'} left as it is; re-run the tune to rebuild them",
            file=sys.stderr,
        )
        return 2
    md, _, _ = tuning.section(out, out)
    lines = [f"# Tuning report: `{out}`", "", *md]
    (out / "tune.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
