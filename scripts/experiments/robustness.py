"""How much do a demo's iteration savings move with round-off alone? Each optimizer's best-LR
full-length runs of a finished demo (every seed it has there, or ``--seeds``), re-run compiled
and eager, with 1 and 2 threads.

``python -m scripts.experiments.robustness results/runs/demo [--seeds 0] [--out DIR] [overrides]``

The demo's runs are the reference (their own compile setting and thread count, recorded in
each run's ``env.json``); each variant re-runs the same configurations in this process, one
run at a time. In each column the saving is the demo's own: the target is the mean final eval
loss of that column's AdamW runs, ``N`` the mean over seeds of the interpolated iteration at
which each run reaches it (:func:`scripts.measures.crossing`; AdamW at its last iteration),
and the saving ``1 - N_opt / N_adamw``. With ``--seeds 0`` it is one run's saving, which
carries that seed's noise. Compiled and eager kernels, and 1 or 2 threads, sum in different
orders: over hundreds of steps such differences grow into different curves, and the table
says how far the savings move (the regime issue asks for <= 3 points).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

from scripts.experiments.protocol import Cell
from scripts.measures import INF, crossing
from scripts.record import RunRecord

VARIANTS = {  # name -> (train.compile, threads)
    "compiled, 1 thread": ("true", 1),
    "compiled, 2 threads": ("true", 2),
    "eager, 2 threads": ("false", 2),
}


def best_runs(demo: Path, seeds: list[int] | None = None) -> dict[str, list[Path]]:
    """Each optimizer's completed full-length runs at its best LR, as the demo's report chose
    it (:meth:`scripts.report.analysis.Comparison.best_runs`): every seed there, or those of
    ``seeds``."""
    from scripts.report.analysis import analyse
    from scripts.report.load import load_runs

    comparisons = analyse(load_runs(demo), None).comparisons
    if len(comparisons) != 1:
        raise SystemExit(f"error: {demo} holds {len(comparisons)} model/regime groups: give one")
    (c,) = comparisons
    best: dict[str, list[Path]] = {}
    for row in c.rows:
        runs = sorted(
            (r for r in c.best_runs(row.optimizer) if r.completed),
            key=lambda r: r.seed,
        )
        runs = [r.run_dir for r in runs if seeds is None or r.seed in seeds]
        if runs:
            best[row.optimizer] = runs
    if "adamw" not in best:
        raise SystemExit(f"error: no completed adamw run in {demo} (seeds {seeds}): run the demo")
    return best


def savings(runs: dict[str, list[Path]]) -> dict[str, float]:
    """Iterations saved against AdamW at AdamW's mean final loss, per optimizer: ``1 -
    mean N_opt / N_adamw`` (a seed that never reaches it gives a negative infinity saving)."""
    recs = {o: [RunRecord.read(d) for d in ds] for o, ds in runs.items()}
    base = recs["adamw"]
    if not all(r is not None and r.completed for r in base):
        bad = [str(d) for d, r in zip(runs["adamw"], base, strict=True) if not (r and r.completed)]
        raise SystemExit(f"error: adamw run {bad[0]} did not complete: no target; re-run it")
    target = statistics.fmean(r.final_eval_loss for r in base)
    n_base = statistics.fmean(r.steps for r in base)
    out = {}
    for o, rs in recs.items():
        if o != "adamw":  # a run that crashed or diverged never reaches the target
            n = statistics.fmean(
                crossing([vars(e) for e in r.eval_history], target)[0]
                if r is not None and r.completed
                else INF
                for r in rs
            )
            out[o] = 1 - n / n_base
    return out


def reference_setting(run_dir: Path) -> str:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    env = (
        yaml.safe_load((run_dir / "env.json").read_text())
        if (run_dir / "env.json").exists()
        else {}
    )
    threads = (env.get("hardware") or {}).get("torch_threads", "?")
    return f"demo's runs (compile={cfg['train']['compile']}, {threads} thread(s))"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="a finished demo's run directory")
    ap.add_argument("--out", type=Path, default=None, help="default <demo>/robustness")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["compiled, 2 threads", "eager, 2 threads"],
        choices=list(VARIANTS),
        help="the demo's own setting (make demo: compiled, 1 thread per run) is the reference",
    )
    ap.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="the seeds re-run at each best LR (default: every seed the demo has there; the "
        "demo's savings are means over them)",
    )
    ap.add_argument("overrides", nargs="*", help="overrides for every run (e.g. cache_dir=...)")
    args = ap.parse_args(argv)
    import torch

    from scripts.experiments.cells import train

    best = best_runs(args.demo, args.seeds)
    out = args.out or args.demo / "robustness"
    cols = {reference_setting(best["adamw"][0]): savings(best)}
    for name in args.variants:
        compiled, threads = VARIANTS[name]
        torch.set_num_threads(threads)
        runs: dict[str, list[Path]] = {}
        for opt, refs in best.items():
            for ref in refs:
                cfg = yaml.safe_load((ref / "config.yaml").read_text())
                preset = cfg["protocol"]["preset"]
                run_dir = out / name.replace(", ", "_").replace(" ", "") / opt / ref.name
                lr, seed = float(cfg["optimizer"]["lr"]), int(cfg["seed"])
                cell = Cell(opt, lr, 1.0, seed, "robustness")
                over = [f"experiment={preset}", *args.overrides, f"train.compile={compiled}",
                        *cell.overrides(preset, run_dir)]  # fmt: skip
                if train(over):
                    print(f"robustness: {run_dir} failed", file=sys.stderr)
                runs.setdefault(opt, []).append(run_dir)
        cols[name] = savings(runs)
    n_seeds = sorted({len(v) for v in best.values()})
    print(
        f"\n(seeds per optimizer: {', '.join(map(str, n_seeds))}; the savings are means over them)"
    )
    print("\niterations saved against adamw, at adamw's own final loss in each column:")
    print("| optimizer | " + " | ".join(cols) + " | largest move |")
    print("|---|" + "---|" * (len(cols) + 1))
    for opt in best:
        if opt == "adamw":
            continue
        saved = [c[opt] for c in cols.values()]
        cells = [f"{100 * x:.1f}%" if x > -1e9 else "not reached" for x in saved]
        move = 100 * (max(saved) - min(saved))
        print(f"| {opt} | " + " | ".join(cells) + f" | {move:.1f} points |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
