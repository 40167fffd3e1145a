"""The main job on a fresh machine: ``make demo`` (CPU, offline, embedded data, minutes on 2 cores).

The regime (``configs/experiment/demo.yaml``; README, "The CPU regime"), at the paper's
proportions where a 2-core machine allows: the 40k-parameter model at 20 tokens per
non-embedding parameter (3,128 steps of 2 x 128 tokens, the CPU regime's small batch, whose
steps per run and tokens per step per parameter are near the paper's large batch's), a
byte-level vocabulary, precondition frequency 160, cosine schedule with 10% warmup, 50 evaluations per
run on a fixed set (a schedule-fraction run: at its end only,
:meth:`scripts.experiments.protocol.Cell.overrides`).

The protocol (:mod:`scripts.experiments.protocol`, the paper's in miniature): every optimizer
sweeps the same half-decade LR grid at full length (extended by one value, up to twice, while
the best sits on its edge); its two best LRs then run two more seeds (3 in all: model
initialisation and data order) and the lower mean over 3 seeds wins (the runoff), which runs
at schedule fractions 0.2, 0.4, 0.6 and 0.8 with the same 3 seeds (each with its own full cosine schedule) for the power-law fit; then the report and the
dashboard. Runs that do not wait on each other run at once (``--jobs``; by default one per
core, each with one thread: :mod:`scripts.experiments.cells`), each timed on its own and
recorded with the concurrency it ran under. The report checks the regime's criteria (best LR interior, no eval loss of a
best-LR run above its first) and says which savings are significant.
``--quick`` runs a few steps per cell (the CI smoke test).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from scripts.experiments import protocol
from scripts.experiments.cells import InProcess, threads_per_run, train
from scripts.experiments.protocol import CannotStart, Cell

REPO = Path(__file__).resolve().parents[2]
PRESET = "demo"  # configs/experiment/demo.yaml
OPTIMIZERS = ("adamw", "shampoo", "soap")
GRID = [3.16e-3, 1e-2, 3.16e-2]  # the same half-decade grid for every optimizer
# `make lineup`: the field's optimizers under the same protocol (configs/optimizer/<name>.yaml).
LINEUP = ("adamw", "soap", "shampoo", "muon", "kron", "schedulefree", "lion", "adafactor",
          "ademamix")  # fmt: skip
# Each optimizer's half-decade grid, centred where its authors' defaults put its LR relative
# to AdamW's (the edge extension moves it when the best LR sits on an edge): Lion's sign
# update wants 3-10x less (Chen et al. 2023), PSGD-Kron's unit-RMS update too (heavyball's
# default 1e-3); Muon's orthogonalised update, scaled to AdamW's RMS here, a little more.
GRIDS = {
    "lion": [3.16e-4, 1e-3, 3.16e-3],
    "kron": [3.16e-4, 1e-3, 3.16e-3],
}

FULL = {
    "overrides": [],
    "lrs": {o: GRIDS.get(o, GRID) for o in LINEUP},
    "seeds": [1, 2],  # with the sweep's seed 0: three seeds at each best LR
    # 0.2 as well as the paper-like 0.4-0.8: at 256 tokens per step AdamW's mean final loss
    # falls almost linearly over 40-100% of the steps (2.08, 1.96, 1.85, 1.77), and the fit's
    # asymptote pinned at 0; a 20% run identifies it (all three fits valid, the fit's savings
    # within 5 points of the crossings'; README, "What the demo shows").
    "fractions": [0.2, 0.4, 0.6, 0.8],
    "fraction_seeds": [0, 1, 2],  # the fit's points: means over the same 3 seeds at each length
    "max_extend": 2,  # the lineup's Adafactor still sat on the edge after one
    # The sweep's 2 best LRs both run seeds 1 and 2, and the lower mean over 3 seeds wins
    # (scripts/experiments/protocol.py): AdamW's seed noise made the pick on seed 0 a coin flip.
    "runoff": 2,
}
QUICK = {
    "overrides": [
        "train.max_steps=6",
        "train.eval_every=2",
        "regime.global_batch=16",
        "regime.micro_batch=16",
    ],
    "lrs": {"adamw": [3e-3, 1e-2], **{o: [GRIDS.get(o, GRID)[1]] for o in LINEUP[1:]}},
    "seeds": [1],
    "fractions": [0.5],
    "fraction_seeds": [0],
    "max_extend": 0,
    "runoff": 1,
}


def run_cell(out: Path, cell: Cell, extra: list[str]) -> float | None:
    """One training run, in this process (saves ~10 s of start-up per run; peak memory is
    still per run, see ``scripts.trainer.memory.reset_peak_memory``). A failing run is reported
    as crashed and the demo goes on; a configuration that cannot start stops it (exit 2);
    Ctrl-C stops the whole demo."""
    from scripts.record import RunRecord
    from scripts.trainer import EXIT_CONFIG, EXIT_INTERRUPTED

    run_dir = out / cell.optimizer / cell.name()
    if STOP.requested:  # a Ctrl-C that landed between runs (see main)
        raise KeyboardInterrupt
    code = train([*extra, *cell.overrides(PRESET, run_dir)])  # the protocol's own last
    if code == EXIT_INTERRUPTED or STOP.requested:
        raise KeyboardInterrupt  # the trainer saved a checkpoint: stop the whole demo
    if code == EXIT_CONFIG:
        raise CannotStart(f"{run_dir} could not start (its error is above)")
    if code:  # a crash is exit 1: the report counts it as not reached
        print(
            f"demo: run {run_dir} ended with exit code {code}; it counts as not reached",
            file=sys.stderr,
        )
    rec = RunRecord.read(run_dir)
    return rec.final_eval_loss if rec is not None and rec.completed else None


class _Stop:
    """Ctrl-C between runs: Python raises KeyboardInterrupt wherever the main thread is, and
    on a busy machine that can be inside a finalizer run by garbage collection (after a
    run, while the next one is set up), where Python prints and swallows it; the demo then went
    on. The demo's own handler also records the request, checked before and after every run.
    During a run the trainer's handler takes over (checkpoint, exit 130) and gives this one
    back when the run ends."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True
        raise KeyboardInterrupt


STOP = _Stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="soap-bench demo: AdamW vs Shampoo vs SOAP at tiny scale on CPU"
    )
    ap.add_argument("--out", default="results/runs/demo", help="where the run directories go")
    ap.add_argument("--report-out", default=None, help="report directory (default: <out>/report)")
    ap.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    ap.add_argument(
        "--optimizers",
        nargs="+",
        default=list(OPTIMIZERS),
        help=f"optimizers (configs/optimizer/<name>.yaml; `make lineup`: {' '.join(LINEUP)}); "
        "AdamW is the baseline",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=max(1, min(8, os.cpu_count() or 1)),
        help="runs at once, each with cpu_count/jobs threads (default: one per core, at most "
        "8; on 2 cores two at once train 1.5x the tokens per second of one with both cores, "
        "see scripts/experiments/cells.py)",
    )
    ap.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=None,
        help="schedule fractions run at each best LR, besides the full length (default: 0.2 "
        "0.4 0.6 0.8; the fit needs 3 run lengths). Into an existing --out only the missing runs run",
    )
    ap.add_argument(
        "--fraction-seeds",
        nargs="+",
        type=int,
        default=None,
        help="each schedule fraction's seeds (default: 0 1 2, the fit's points averaged over "
        "3 seeds; `make lineup` runs 0 alone: it ranks by iterations, not by the fit)",
    )
    ap.add_argument(
        "--runoff",
        type=int,
        default=None,
        help="the sweep's K best LRs all run the extra seeds, and the best is chosen on the "
        "mean over every seed (default: 2; 1: the paper's pick on seed 0)",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for every run, e.g. data=local data.paths=[book.txt]",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    STOP.requested = False
    previous = signal.signal(signal.SIGINT, STOP.handle)
    try:
        return _demo(args, argv)
    except KeyboardInterrupt:
        print(
            "demo: interrupted; run the same command again to continue (completed runs are kept)",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)


def compile_overrides() -> list[str]:
    """``train.compile=true`` when torch.compile can build CPU kernels here. Compiled decoder
    layers made the demo's forward+backward ~20% faster on a 2-core VM (README, "CPU runs at
    once, measured"). The compile is paid once per process, in the first run's warm-up steps
    (outside the clock): the demo's runs share their process and, being the same model, the
    same compiled code. Round-off differs from eager, so curves move by the runs' own chaos:
    one seed's saving by up to ~6 points, the 3-seed mean by ~1 (README)."""
    from scripts.trainer.checks import cpp_compiler

    if cpp_compiler() is None:
        print("demo: no C++ compiler found (CXX, else g++): runs stay eager (slower)")
        return []
    return ["train.compile=true"]


def _demo(args: argparse.Namespace, argv: list[str] | None) -> int:
    plan = QUICK if args.quick else FULL
    lrs = {o: plan["lrs"].get(o, [GRID[1]] if args.quick else GRID) for o in args.optimizers}
    check_optimizers(args.optimizers)
    over = ["experiment=demo", *plan["overrides"]]
    if not args.quick:  # a few steps per run: compiling would cost more than it saves
        over = [*compile_overrides(), *over]
    proto = protocol.Protocol(
        preset=PRESET,
        optimizers=list(args.optimizers),
        lrs=lrs,
        seeds=[0],
        best_seeds=plan["seeds"],
        fractions=args.fractions or plan["fractions"],
        fraction_seeds=args.fraction_seeds or plan["fraction_seeds"],
        max_extend=plan["max_extend"],
        runoff=plan["runoff"] if args.runoff is None else args.runoff,
    )
    out = Path(args.out)
    t0 = time.time()
    print(f"demo: {proto.count()} runs (more if a grid needs extending) into {out}", flush=True)
    print(
        f"demo: {args.jobs} run(s) at once, {threads_per_run(args.jobs)} thread(s) each",
        flush=True,
    )
    try:
        with InProcess(args.jobs) as cells:
            protocol.run(
                proto,
                lambda c: cells.submit(run_cell, out, c, [*over, *args.overrides]),
                log=lambda m: print(m, flush=True),
            )
    except CannotStart as e:
        print(f"demo: {e}; no further run started: fix the configuration", file=sys.stderr)
        return 2
    from scripts.report import write_report

    cmd = "python -m scripts.demo " + " ".join(argv if argv is not None else sys.argv[1:])
    res = write_report(
        out, args.report_out, command=f"{cmd.strip()} (report: python -m scripts.report {out})"
    )
    for name, table in res.headline.items():
        print(f"\n{name}\n{table}\n")
        for v in res.verdicts[name]:
            print(v)
    for c in res.analysis.comparisons:
        for note in c.notes:
            print(f"note: {note}")
    print(
        f"\ndemo finished in {time.time() - t0:.0f}s\nreport: {res.out / 'report.md'}\ndashboard: {res.dashboard}"
    )
    return 0


def check_optimizers(names: list[str]) -> None:
    """Each name has a config file and its library imports, or one line naming the fix (exit
    2) before any run starts."""
    from scripts.config import compose
    from scripts.coordinate import known_optimizers
    from scripts.trainer.checks import ConfigError, importable

    known = known_optimizers()
    for name in names:
        if name not in known:
            raise SystemExit(
                f"error: unknown optimizer {name!r}: use {', '.join(known)}, or add "
                f"configs/optimizer/{name}.yaml"
            )
        try:
            importable(str(compose([f"optimizer={name}", "run_dir=."]).optimizer._target_))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    raise SystemExit(main())
