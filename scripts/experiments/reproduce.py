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
import contextlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from scripts.experiments import protocol
from scripts.experiments.cells import NOT_STARTED, Commands, exit_code
from scripts.experiments.launch import head_node, launch, sbatch_script
from scripts.experiments.plan import budget, plan, plan_line, preset_cfg
from scripts.experiments.protocol import CannotStart, Cell, Protocol
from scripts.record import RunRecord
from scripts.trainer.checks import EXIT_CONFIG

QUICK = ["train.max_steps=8", "train.eval_every=4", "train.checkpoint_every=4"]


def rehearsal_data(cache_dir: str, write: bool = True) -> list[str]:
    """The embedded corpus as a local hub-layout folder, streamed like C4 (``write=False``,
    for ``--plan`` and ``--dry-run``: only its path, nothing written)."""
    from data.config import DataConfig
    from data.sources import export_hub_layout

    folder = Path(cache_dir) / "rehearsal-hub"
    if write:
        folder = export_hub_layout(DataConfig(), folder)
    return [f"data.name={folder.resolve()}"]


def train_cmd(
    preset: str,
    cell: Cell,
    gpus: int,
    out: Path,
    extra: list[str],
    nodes: int = 1,
    restarts: int = 0,
    head: str = "localhost",
) -> list[str]:
    run_dir = out / cell.optimizer / cell.name()
    name = f"{cell.optimizer}-{cell.lr:g}-{cell.fraction:g}-{cell.seed}"
    launcher = launch(gpus, nodes, restarts, name, head)
    return [
        *launcher,
        "scripts.train",
        f"experiment={preset}",
        "train.progress=false",
        *extra,
        *cell.overrides(preset, run_dir),  # last: the protocol's own
    ]


def tune_phase(args: argparse.Namespace, out: Path, extra: list[str]) -> dict[str, dict]:
    """Full tuning before the comparison: ``scripts.tune`` (resumable: re-running continues
    its study), then each optimizer's tuned learning rate and other overrides."""
    tdir = out / "tune"
    cmd = [
        sys.executable, "-m", "scripts.tune", f"tune.space={args.tune_space}",
        f"tune.optimizers=[{','.join(args.optimizers)}]", f"tune.budget={args.tune_budget}",
        f"tune.workers={args.tune_workers}", f"tune.out={tdir}", f"experiment={args.preset}", *extra,
    ]  # fmt: skip
    if args.tune_storage:
        cmd.append(f"tune.storage={args.tune_storage}")
    _run(cmd, args.dry_run)
    if args.dry_run:
        return {}
    res = json.loads((tdir / "tune.json").read_text())["optimizers"]
    return {
        o: {
            "lr": r["best"]["lr"],
            "overrides": [x for x in r["overrides"] if not x.startswith("optimizer.lr=")],
        }
        for o, r in res.items()
    }


def _final_loss(cmd: list[str]) -> float | None:
    run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("run_dir=")))
    rec = RunRecord.read(run_dir)
    return rec.final_eval_loss if rec is not None and rec.completed else None


def submitter(ex: Commands | None, cmd_for: Callable[[Cell], list[str]]) -> Callable:
    """The protocol's ``submit``: each run's command printed, then run by ``ex`` (None: a dry
    run, nothing runs); its future holds the run's final eval loss (None: crashed, diverged
    or not reached), or :class:`CannotStart` when it exited with the trainer's configuration
    code or was not started after such a run."""

    def submit(cell: Cell) -> Future:
        cmd = cmd_for(cell)
        print("+", shlex.join(cmd), flush=True)
        out: Future = Future()
        if ex is None:
            out.set_result(None)
            return out
        run_dir = next((a for a in cmd if a.startswith("run_dir=")), shlex.join(cmd))

        def done(f: Future) -> None:
            try:
                code = exit_code(f)
                if code in (EXIT_CONFIG, NOT_STARTED):
                    raise CannotStart(f"{run_dir} could not start (its error is above)")
                if code:
                    print(f"reproduce: {run_dir} ended with exit code {code}; it counts as not "
                          "reached")  # fmt: skip
                out.set_result(_final_loss(cmd))
            except BaseException as e:  # noqa: BLE001 - a broken pool too: never leave it pending
                out.set_exception(e)

        ex.submit(cmd).add_done_callback(done)
        return out

    return submit


def default_gpus(args: argparse.Namespace) -> int:
    """``--gpus`` when not given: the GPUs of this node (shared by ``--jobs`` runs at once),
    1 on a CPU machine; printed, so a run's launch is never a surprise."""
    from scripts.experiments.cells import visible_devices

    n = len(visible_devices())
    gpus = max(1, n // args.jobs) if n else 1
    where = f"{n} GPU(s) visible" if n else "no GPU here"
    # On stderr: stdout stays the plan's and the runs' (scripts read it).
    print(f"reproduce: --gpus {gpus} ({where}; pass --gpus N to choose)", file=sys.stderr)
    return gpus


def preflight(cmds: list[list[str]], world: int) -> None:
    """Every distinct configuration of these commands (one per optimizer) composed and
    checked as the trainer would, world size included, before any run starts: a run that
    cannot start stops the phase here in one line (exit 2), instead of every cell of the
    grid failing the same way, or a launcher's failure tables hiding the reason."""
    from scripts.config import compose, error_line
    from scripts.trainer.checks import ConfigError, grad_accum_steps, validate

    seen = set()
    for cmd in cmds:
        over = cmd[cmd.index("scripts.train") + 1 :]
        opt = next((o for o in over if o.startswith("optimizer=")), "")
        if opt in seen:
            continue
        seen.add(opt)
        try:
            cfg = compose(over)
            validate(cfg)
            grad_accum_steps(cfg.regime.global_batch, cfg.regime.micro_batch, world)
        except Exception as e:  # ConfigError, or Hydra's and OmegaConf's multi-line errors
            line = str(e) if isinstance(e, ConfigError) else error_line(e)
            print(f"error: {line}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


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
    ap.add_argument("preset", nargs="?", help="an experiment preset (or --study NAME)")
    ap.add_argument(
        "--study", default=None, help="a study in configs/study (scripts/experiments/study.py)"
    )
    ap.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="processes per run (torchrun); 1: plain python (default: the GPUs present, 1 "
        "on a CPU machine)",
    )
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "shampoo", "soap"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3.16e-3, 1e-2])
    ap.add_argument(
        "--fractions",
        nargs="*",
        type=float,
        default=[0.5, 0.625, 0.75, 0.875],
        help="schedule fractions run at each best LR (none: --fractions alone)",
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--fraction-seeds", nargs="+", type=int, default=None, help="each "
                    "fraction's seeds (default: --seeds); the fit averages them")  # fmt: skip
    ap.add_argument(
        "--extend",
        type=int,
        default=0,
        help="up to N more LRs, half a decade beyond the edge, while an optimizer's best LR "
        "sits on its sweep's edge (the demo's rule; not in --plan's budget)",
    )
    ap.add_argument(
        "--best-seeds",
        nargs="+",
        type=int,
        default=[],
        help="more seeds at each best LR, full length (the demo's protocol: seeds 1 2)",
    )
    ap.add_argument("--runoff", type=int, default=1, help="the sweep's K best LRs all run "
                    "--best-seeds; the lowest mean over every seed wins (1: the paper's pick)")  # fmt: skip
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once on this node, each with its share of the cores (and, with --gpus, "
        "its own GPUs); their wall-clock is recorded as measured under that sharing",
    )
    ap.add_argument("--out", default=None, help="default results/runs/<preset>")
    ap.add_argument(
        "--plan", action="store_true", help="print budgets and estimated GPU-hours, run nothing"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument(
        "--slurm",
        action="store_true",
        help="one node: phase 1 via Hydra multirun + submitit; --nodes N: one sbatch job",
    )
    ap.add_argument(
        "--allow-mixed-tokens-per-param",
        action="store_true",
        help="--study: run a study whose experiments differ in tokens per parameter (size "
        "confounded with run length; refused otherwise)",
    )
    ap.add_argument("--nodes", type=int, default=1, help="nodes per run (srun + c10d rendezvous)")
    ap.add_argument(
        "--tune",
        choices=("lr", "full"),
        default="lr",
        help="lr: the LR sweep (phase 1); full: scripts.tune over --tune-space first, then "
        "every optimizer at its tuned settings (its LR sweep skipped)",
    )
    ap.add_argument(
        "--lr-from",
        default=None,
        metavar="DIR",
        help="an ablation: every optimizer at its best LR among the runs in DIR (an earlier "
        "experiment of the same regime), no sweep",
    )
    ap.add_argument("--tune-space", default="paper", help="a file in configs/tune")
    ap.add_argument("--tune-budget", type=int, default=30, help="max trials per optimizer")
    ap.add_argument("--tune-workers", type=int, default=1, help="tuner worker processes")
    ap.add_argument("--tune-storage", default=None, help="Optuna storage URL (default SQLite)")
    ap.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="torchrun restarts after a lost rank (default: 0 on one node, 3 on several)",
    )
    ap.add_argument("--quick", action="store_true", help="a few steps per run (CI)")
    ap.add_argument("overrides", nargs="*", default=[], help="extra overrides for every run")
    args = ap.parse_intermixed_args(argv)  # overrides may follow the options
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.gpus is None:
        args.gpus = default_gpus(args)
    elif args.gpus < 1:
        ap.error(f"--gpus must be >= 1, got {args.gpus}")
    if args.study:
        from scripts.experiments import study

        if args.preset:  # with --study, the first override lands in the preset's place
            args.overrides, args.preset = [args.preset, *args.overrides], None

        return study.main(args, list(argv if argv is not None else sys.argv[1:]))
    if not args.preset:
        ap.error("give an experiment preset, or --study NAME")
    t0 = time.time()
    out = Path(args.out or f"results/runs/{args.preset}")
    given = {o.split("=", 1)[0] for o in args.overrides}
    extra = list(args.overrides) + [q for q in QUICK if args.quick and q.split("=")[0] not in given]
    cfg = preset_cfg(args.preset, extra)
    if args.preset == "rehearsal":
        extra += rehearsal_data(cfg.cache_dir, write=not (args.plan or args.dry_run))
    pl = plan(args.preset, args.fractions, extra)
    print(plan_line(pl, *budget(pl, args)), flush=True)
    if args.plan:
        return 0
    restarts = args.max_restarts if args.max_restarts is not None else (3 if args.nodes > 1 else 0)
    if args.slurm and args.nodes > 1:
        script = sbatch_script(args, list(argv if argv is not None else sys.argv[1:]))
        path = out / "reproduce.sbatch"
        print(f"{path}:\n{script}")
        if args.dry_run:  # shown, not written
            return 0
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        return subprocess.call(["sbatch", str(path)])
    head = head_node(args.dry_run) if args.nodes > 1 else "localhost"
    if args.slurm:
        try:
            import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        except ImportError:
            raise SystemExit(
                "error: --slurm needs Hydra's submitit launcher: pip install -e '.[cluster]'"
            ) from None
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
    tuned = tune_phase(args, out, extra) if args.tune == "full" else {}
    if args.lr_from:
        from scripts.experiments.study import lrs_from

        tuned = {o: {"lr": lr, "overrides": []} for o, lr in lrs_from(args).items()}

    def cmd_for(cell: Cell) -> list[str]:
        o = cell.optimizer
        more = [*extra, *tuned[o]["overrides"]] if o in tuned else extra
        return train_cmd(args.preset, cell, args.gpus, out, more, args.nodes, restarts, head)

    # Phases 1 and 2: the protocol (scripts/experiments/protocol.py).
    proto = Protocol(
        preset=args.preset,
        optimizers=list(args.optimizers),
        lrs={o: list(args.lrs) for o in args.optimizers},
        seeds=list(args.seeds),
        best_seeds=list(args.best_seeds),
        runoff=args.runoff,
        fractions=list(args.fractions),
        fraction_seeds=args.fraction_seeds,
        max_extend=args.extend,
        tuned={o: t["lr"] for o, t in tuned.items()},
    )
    if not args.dry_run:  # every optimizer's configuration, checked before any run starts
        preflight([cmd_for(Cell(o, args.lrs[0], 1.0, 0, "sweep")) for o in args.optimizers],
                  args.gpus * args.nodes)  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            ex = None if args.dry_run else stack.enter_context(Commands(args.jobs, args.gpus))
            protocol.run(proto, submitter(ex, cmd_for), log=print, dry=args.dry_run)
    except CannotStart as e:
        print(f"reproduce: {e}; no further run started: fix the configuration", file=sys.stderr)
        return 2
    # Phase 3: the report.
    if args.dry_run:
        return 0
    # An ablation without AdamW (a study's frequency ladder, a variant) is compared to one of
    # its own optimizers, named as its runs record them (a variant: soap-one-sided).
    from scripts.report import load_runs

    present = sorted({r.optimizer for r in load_runs(out)})
    base = "adamw" if "adamw" in present or not present else present[0]
    code = subprocess.call([sys.executable, "-m", "scripts.report", str(out), "--baseline", base])
    print(f"reproduce {args.preset}: all phases done in {time.time() - t0:.0f}s", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
