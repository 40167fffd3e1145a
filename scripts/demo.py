"""The main job on a fresh machine: ``make demo`` (CPU, offline, embedded data).

Tiny model, ``cpu`` regime; AdamW, Shampoo and SOAP each over a learning-rate sweep at full
length (same data, same schedule shape), then SOAP and AdamW at their best LR again at shorter
schedule fractions so the paper's power-law fit has three run lengths; then the report and the
dashboard. ``--quick`` runs a few steps per cell (the CI smoke test).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from scripts.measures import best_lr

REPO = Path(__file__).resolve().parent.parent

# LR grids in half-decade steps; a grid whose best value sits on its edge is extended (up to
# max_extend values) so that every optimizer is compared at an interior optimum.


def half_decade(lr: float, direction: int) -> float:
    """The next value on the half-decade grid 1e-3, 3.16e-3, 1e-2, ... above or below ``lr``."""
    k = round(2 * math.log10(lr)) + direction
    return float(f"{10 ** (k / 2):.3g}")


FULL = {
    "steps": 200,
    "eval_every": 25,
    # Starting grids from a first exploration at this scale (tiny model, 200 steps): AdamW's
    # optimum lies at higher LRs than SOAP's and Shampoo's; edges are extended regardless.
    "lrs": {
        "adamw": [1e-2, 3.16e-2, 1e-1],
        "shampoo": [1e-3, 3.16e-3, 1e-2],
        "soap": [3.16e-3, 1e-2, 3.16e-2],
    },
    "fractions": [0.5, 0.75],
    "max_extend": 2,
}
QUICK = {
    "steps": 4,
    "eval_every": 2,
    "lrs": {"adamw": [3e-3, 1e-2], "shampoo": [3e-3], "soap": [3e-3]},
    "fractions": [0.5, 0.75],
    "max_extend": 0,
}


def run_cell(
    out: Path, optimizer: str, lr: float, fraction: float, plan: dict, extra: list[str]
) -> float | None:
    """One training run, in this process (saves ~10 s of start-up per run; peak memory is
    still per run, see ``scripts.trainer.loop.reset_peak_memory``). A failing run is reported as
    crashed and the demo goes on."""
    from scripts.config import compose
    from scripts.trainer import EXIT_INTERRUPTED, run_training

    run_dir = out / optimizer / f"lr{lr:g}_frac{fraction:g}"
    overrides = [
        "experiment=demo",
        f"optimizer={optimizer}",
        f"optimizer.lr={lr}",
        f"train.max_steps={plan['steps']}",
        f"train.fraction={fraction}",
        f"train.eval_every={plan['eval_every']}",
        f"run_dir={run_dir}",
        *extra,
    ]
    try:
        code = run_training(compose(overrides))
    except Exception as e:  # keep going: the report counts it as not reached
        code = 1
        print(f"demo: run {run_dir} failed: {type(e).__name__}: {e}", file=sys.stderr)
    if code == EXIT_INTERRUPTED:
        # Ctrl-C / SIGTERM reached the trainer, which saved a checkpoint: stop the whole demo.
        raise KeyboardInterrupt
    if code:
        print(
            f"demo: run {run_dir} ended with exit code {code}; it is reported as not reached",
            file=sys.stderr,
        )
    from scripts.record import RunRecord

    rec = RunRecord.read(run_dir)
    return rec.final_eval_loss if rec is not None and rec.completed else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="soap-bench demo: AdamW vs Shampoo vs SOAP at tiny scale on CPU"
    )
    ap.add_argument("--out", default="results/runs/demo", help="where the run directories go")
    ap.add_argument("--report-out", default=None, help="report directory (default: <out>/report)")
    ap.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    ap.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides for every run, e.g. train.progress=false",
    )
    args = ap.parse_args(argv)
    try:
        return _demo(args, argv)
    except KeyboardInterrupt:
        print(
            "demo: interrupted; run the same command again to continue (completed runs are kept)",
            file=sys.stderr,
        )
        return 130


def _demo(args: argparse.Namespace, argv: list[str] | None) -> int:
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    t0 = time.time()
    n_cells = sum(len(v) for v in plan["lrs"].values()) + 2 * len(plan["fractions"])
    print(
        f"demo: {n_cells} runs (more if a grid needs extending) into {out} (tiny model, cpu regime, embedded data)",
        flush=True,
    )
    best: dict[str, tuple[float, float]] = {}
    for opt, lrs in plan["lrs"].items():
        losses: dict[float, float | None] = {}
        queue = list(lrs)
        extended = 0
        while queue:
            lr = queue.pop(0)
            losses[lr] = run_cell(out, opt, lr, 1.0, plan, args.overrides)
            if not queue and extended < plan["max_extend"]:
                grid = sorted(losses)
                top = best_lr(losses.items())[0]
                if top == grid[-1]:
                    queue.append(half_decade(top, +1))
                elif top == grid[0]:
                    queue.append(half_decade(top, -1))
                if queue:
                    extended += 1
                    print(
                        f"demo: best {opt} lr {top:g} is on the grid's edge; adding lr {queue[0]:g}",
                        flush=True,
                    )
        found = best_lr(losses.items())
        if found is not None and math.isfinite(found[1]):
            best[opt] = found
    for opt in ("soap", "adamw"):
        if opt in best:
            for frac in plan["fractions"]:
                run_cell(out, opt, best[opt][0], frac, plan, args.overrides)
    from scripts.report import write_report

    cmd = "python -m scripts.demo " + " ".join(argv if argv is not None else sys.argv[1:])
    res = write_report(
        out, args.report_out, command=f"{cmd.strip()} (report: python -m scripts.report {out})"
    )
    for name, table in res.headline.items():
        print(f"\n{name}\n{table}")
    print(
        f"\ndemo finished in {time.time() - t0:.0f}s\nreport: {res.out / 'report.md'}\ndashboard: {res.dashboard}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
