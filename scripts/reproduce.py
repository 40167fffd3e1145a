"""Reproduce the paper's grid on GPUs: ``make reproduce PRESET=paper_360m_large_batch``.

``python -m scripts.reproduce <preset> [--gpus N] [--lrs ...] [--fractions ...] [--seeds ...]
[--optimizers ...] [--plan] [--dry-run] [--slurm]``

Phase 1 sweeps each optimizer's learning rate at full length; phase 2 runs each optimizer's
best LR at the schedule fractions (each with its own full cosine schedule), the runs the
paper's power-law fit needs; then ``scripts.report`` compares them. Runs already completed are
skipped (``resume=auto``), so the command can be re-run after a preemption.

``--plan`` prints token budgets, iterations and estimated H100-hours per run (6 N FLOPs per
token at 40% of 989 bf16 TFLOP/s: an estimate, not a measurement). ``--slurm`` launches the
same cells through Hydra multirun with hydra-submitit-launcher (``pip install -e '.[cluster]'``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts.config import CONFIGS, compose
from scripts.measures import best_lr
from scripts.record import RunRecord

PEAK, MFU = 989e12, 0.4


def preset_cfg(preset: str) -> Any:
    """The composed config of an experiment preset (Hydra's compose API)."""
    names = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    if preset not in names:
        raise SystemExit(f"error: unknown preset {preset!r}: choose one of {names}")
    return compose([f"experiment={preset}", "run_dir=."])


def plan(preset: str, fractions: list[float]) -> dict:
    from models.presets import get_preset

    cfg = preset_cfg(preset)
    p = get_preset(cfg.model.preset)
    tokens = cfg.train.tokens_per_param * p.non_embedding_params(cfg.model.qk_norm)
    per_step = cfg.regime.global_batch * cfg.regime.seq_len
    steps = round(tokens / per_step)
    flops = 6 * p.total_params() * tokens
    hours = flops / (PEAK * MFU) / 3600
    return {
        "preset": preset,
        "model": cfg.model.preset,
        "regime": cfg.regime.name,
        "non_embedding_params": p.non_embedding_params(),
        "tokens": tokens,
        "tokens_per_step": per_step,
        "steps": steps,
        "h100_hours_full_run": hours,
        "h100_hours_fraction_runs": hours * sum(f for f in fractions if f < 1.0),
    }


def train_cmd(
    preset: str, optimizer: str, lr: float, fraction: float, seed: int, gpus: int, out: Path
) -> list[str]:
    run_dir = out / optimizer / f"lr{lr:g}_frac{fraction:g}_seed{seed}"
    launcher = (
        ["accelerate", "launch", f"--num_processes={gpus}", "--mixed_precision=bf16", "-m"]
        if gpus > 0
        else [sys.executable, "-m"]
    )
    return [
        *launcher,
        "scripts.train",
        f"experiment={preset}",
        f"optimizer={optimizer}",
        f"optimizer.lr={lr}",
        f"train.fraction={fraction}",
        f"seed={seed}",
        f"run_dir={run_dir}",
        "train.progress=false",
    ]


def _final_loss(cmd: list[str]) -> float | None:
    run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("run_dir=")))
    rec = RunRecord.read(run_dir)
    return rec.final_eval_loss if rec is not None and rec.completed else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument(
        "--gpus", type=int, default=8, help="processes per run (accelerate launch); 0: plain python"
    )
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "shampoo", "soap"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3.16e-3, 1e-2])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.625, 0.75, 0.875])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default=None, help="default results/runs/<preset>")
    ap.add_argument(
        "--plan", action="store_true", help="print budgets and estimated GPU-hours, run nothing"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument(
        "--slurm",
        action="store_true",
        help="phase 1 via Hydra multirun + submitit (needs the cluster extra)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out or f"results/runs/{args.preset}")
    pl = plan(args.preset, args.fractions)
    n_runs = len(args.optimizers) * len(args.seeds) * (len(args.lrs) + len(args.fractions))
    print(
        f"{args.preset}: model {pl['model']} ({pl['non_embedding_params'] / 1e6:.0f}M non-embedding), regime {pl['regime']}, "
        f"{pl['tokens'] / 1e9:.2f}B tokens = {pl['steps']} iterations of {pl['tokens_per_step']:,} tokens; "
        f"~{pl['h100_hours_full_run']:.0f} H100-hours per full-length run (estimate), {n_runs} runs, "
        f"~{pl['h100_hours_full_run'] * len(args.optimizers) * len(args.seeds) * len(args.lrs) + pl['h100_hours_fraction_runs'] * len(args.optimizers) * len(args.seeds):.0f} H100-hours in all"
    )
    if args.plan:
        return 0
    if args.slurm:
        cmd = [
            sys.executable,
            "-m",
            "scripts.train",
            "-m",
            "hydra/launcher=submitit_slurm",
            f"experiment={args.preset}",
            "optimizer=" + ",".join(args.optimizers),
            "optimizer.lr=" + ",".join(map(str, args.lrs)),
            "seed=" + ",".join(map(str, args.seeds)),
        ]
        print(shlex.join(cmd))
        return 0 if args.dry_run else subprocess.call(cmd)
    best: dict[str, float] = {}
    for opt in args.optimizers:
        results: list[tuple[float, float | None]] = []
        for lr in args.lrs:
            for seed in args.seeds:
                cmd = train_cmd(args.preset, opt, lr, 1.0, seed, args.gpus, out)
                print("+", shlex.join(cmd), flush=True)
                if not args.dry_run:
                    subprocess.call(cmd)
                    results.append((lr, _final_loss(cmd)))
        found = best_lr(results)
        if found is not None:
            best[opt] = found[0]
    for opt in args.optimizers:
        lr = best.get(opt, args.lrs[len(args.lrs) // 2])
        for frac in args.fractions:
            for seed in args.seeds:
                cmd = train_cmd(args.preset, opt, lr, frac, seed, args.gpus, out)
                print("+", shlex.join(cmd), flush=True)
                if not args.dry_run:
                    subprocess.call(cmd)
    if not args.dry_run:
        return subprocess.call([sys.executable, "-m", "scripts.report", str(out)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
