"""Reproduce the paper's grid: ``make reproduce PRESET=paper_360m_large_batch``; rehearse
every phase of it on CPU: ``make rehearsal``.

``python -m scripts.reproduce <preset> [--gpus N] [--lrs ...] [--fractions ...] [--seeds ...]
[--optimizers ...] [--plan] [--dry-run] [--slurm] [--quick]``

Phases: (0) prepare the data once, before any run is launched (or, for streamed data, train
the tokenizer and read the validation set), so no rank of a multi-GPU run waits for it;
(1) sweep each optimizer's learning rate at full length; (2) run each optimizer's best LR at
the schedule fractions (each with its own full cosine schedule) - the runs the paper's
power-law fit needs; (3) the report and dashboard. Every run is ``torchrun --nproc_per_node
N -m scripts.train ...`` (NCCL on GPUs, gloo on CPU). Completed runs are skipped and an
interrupted one resumes from its checkpoint (``resume=auto``), so re-running the command after
a preemption or a kill continues where it stopped.

``rehearsal`` is the same driver at toy scale on CPU: 2 gloo processes per run, the tiny
model, and data streamed (``data.mode=stream``) through the C4 code path from the embedded
corpus exported as a local folder in the hub layout; ``--quick`` shortens it for CI.

``--plan`` prints token budgets, iterations and estimated H100-hours per run (6 N FLOPs per
token at 40% of 989 bf16 TFLOP/s: an estimate, not a measurement). ``--slurm`` launches phase
1 through Hydra multirun with hydra-submitit-launcher (``pip install -e '.[cluster]'``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.config import CONFIGS, compose
from scripts.measures import best_lr
from scripts.record import RunRecord

PEAK, MFU = 989e12, 0.4
QUICK = ["train.max_steps=8", "train.eval_every=4", "train.checkpoint_every=4"]


def preset_cfg(preset: str, extra: list[str] | None = None) -> Any:
    """The composed config of an experiment preset (Hydra's compose API)."""
    names = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    if preset not in names:
        raise SystemExit(f"error: unknown preset {preset!r}: choose one of {names}")
    return compose([f"experiment={preset}", "run_dir=.", *(extra or [])])


def plan(preset: str, fractions: list[float]) -> dict:
    from models.presets import get_preset

    cfg = preset_cfg(preset)
    p = get_preset(cfg.model.preset)
    tokens = cfg.train.tokens_per_param * p.non_embedding_params(cfg.model.qk_norm)
    if cfg.train.max_steps:
        tokens = cfg.train.max_steps * cfg.regime.global_batch * cfg.regime.seq_len
    per_step = cfg.regime.global_batch * cfg.regime.seq_len
    steps = round(tokens / per_step)
    hours = 6 * p.total_params() * tokens / (PEAK * MFU) / 3600
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


def rehearsal_data(cache_dir: str) -> list[str]:
    """The embedded corpus as a local hub-layout folder, streamed like C4."""
    from data.config import DataConfig
    from data.sources import export_hub_layout

    folder = export_hub_layout(DataConfig(), Path(cache_dir) / "rehearsal-hub")
    return [f"data.name={folder.resolve()}"]


def train_cmd(
    preset: str,
    optimizer: str,
    lr: float,
    fraction: float,
    seed: int,
    gpus: int,
    out: Path,
    extra: list[str],
) -> list[str]:
    run_dir = out / optimizer / f"lr{lr:g}_frac{fraction:g}_seed{seed}"
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m"]
        if gpus > 1
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
        *extra,
    ]


def _final_loss(cmd: list[str]) -> float | None:
    run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("run_dir=")))
    rec = RunRecord.read(run_dir)
    return rec.final_eval_loss if rec is not None and rec.completed else None


def _run(cmd: list[str], dry: bool) -> None:
    print("+", shlex.join(cmd), flush=True)
    if not dry:
        code = subprocess.call(cmd)
        if code:
            print(
                f"reproduce: that run ended with exit code {code}; it counts as not reached",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument(
        "--gpus", type=int, default=8, help="processes per run (torchrun); 1: plain python"
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
    ap.add_argument("--slurm", action="store_true", help="phase 1 via Hydra multirun + submitit")
    ap.add_argument("--quick", action="store_true", help="a few steps per run (CI)")
    ap.add_argument("overrides", nargs="*", default=[], help="extra overrides for every run")
    args = ap.parse_intermixed_args(argv)  # overrides may follow the options
    t0 = time.time()
    out = Path(args.out or f"results/runs/{args.preset}")
    given = {o.split("=", 1)[0] for o in args.overrides}
    extra = list(args.overrides) + [q for q in QUICK if args.quick and q.split("=")[0] not in given]
    cfg = preset_cfg(args.preset, extra)
    if args.preset == "rehearsal":
        extra += rehearsal_data(cfg.cache_dir)
    pl = plan(args.preset, args.fractions)
    n_runs = len(args.optimizers) * len(args.seeds) * (len(args.lrs) + len(args.fractions))
    print(
        f"{args.preset}: model {pl['model']} ({pl['non_embedding_params'] / 1e6:.1f}M non-embedding), regime {pl['regime']}, "
        f"{pl['tokens'] / 1e9:.3g}B tokens = {pl['steps']} iterations of {pl['tokens_per_step']:,} tokens; "
        f"~{pl['h100_hours_full_run']:.3g} H100-hours per full-length run (estimate), {n_runs} runs, "
        f"~{pl['h100_hours_full_run'] * len(args.optimizers) * len(args.seeds) * len(args.lrs) + pl['h100_hours_fraction_runs'] * len(args.optimizers) * len(args.seeds):.3g} H100-hours in all",
        flush=True,
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
    # Phase 0: the data, once, before any run.
    _run(
        [sys.executable, "-m", "scripts.prepare", f"experiment={args.preset}", *extra], args.dry_run
    )
    # Phase 1: LR sweep at full length.
    best: dict[str, float] = {}
    for opt in args.optimizers:
        results: list[tuple[float, float | None]] = []
        for lr in args.lrs:
            for seed in args.seeds:
                cmd = train_cmd(args.preset, opt, lr, 1.0, seed, args.gpus, out, extra)
                _run(cmd, args.dry_run)
                results.append((lr, None if args.dry_run else _final_loss(cmd)))
        found = best_lr(results)
        if found is not None:
            best[opt] = found[0]
    # Phase 2: each best LR at the schedule fractions.
    for opt in args.optimizers:
        lr = best.get(opt, args.lrs[len(args.lrs) // 2])
        for frac in args.fractions:
            for seed in args.seeds:
                _run(
                    train_cmd(args.preset, opt, lr, frac, seed, args.gpus, out, extra), args.dry_run
                )
    # Phase 3: the report.
    if args.dry_run:
        return 0
    code = subprocess.call([sys.executable, "-m", "scripts.report", str(out)])
    print(f"reproduce {args.preset}: all phases done in {time.time() - t0:.0f}s", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
