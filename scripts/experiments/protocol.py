"""The paper's protocol, once: the engine behind ``make demo``, ``scripts.reproduce`` (every
preset, every experiment of a study, ``make tune-demo``) and ``make lineup``.

Vyas et al. (2024), section 5: every optimizer sweeps its learning rate at full length; its
best LR then runs at schedule fractions (each run with its own full cosine schedule, for the
power-law fit ``L(N) = a + b N^-beta``) and, here, with more seeds (the report's intervals).
This harness adds one rule: while the best LR sits on its grid's edge, the sweep goes half a
decade further (``max_extend`` times at most). With full tuning (``tuned``), an optimizer's
sweep is its tuned LR alone.

A second rule, the runoff (``runoff`` = k > 1): the sweep's k best LRs all run the extra
seeds, and the best LR is the one with the lowest mean over every seed. The paper picks on one
run per LR; where AdamW's seed noise (0.05 at lr 0.0316 in the CPU demo) is as large as the
gap between LRs, that pick is a coin flip (the demo chose 0.0316 on seed 0, 1.751 against
0.01's 1.756, where 0.01 is better by 0.06 over 4-10 seeds: results/regime/batch.md). The
runoff costs ``(k - 1) x`` the extra seeds per optimizer; the winner's runs are its seeds.

The engine is event-driven: the runs that do not wait on each other are submitted together,
and an optimizer's follow-up runs start as soon as its own sweep is done. Who trains a run is
the caller's ``submit``: in this process or in worker processes (the demo), or a training
command (``scripts.reproduce``: ``torchrun`` on GPUs). Each run carries its preset and phase
(``protocol.preset``, ``protocol.phase`` in its config), so every record says what produced it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from scripts.measures import best_lr, edge_extension

PHASES = ("sweep", "extend", "tuned", "seeds", "fractions")
FINAL_EVAL_ONLY = 10**9  # train.eval_every past any run's end: the run's final evaluation only


class CannotStart(Exception):
    """A run could not start for a configuration reason: the protocol stops (exit 2), since
    every other run would fail the same way."""


@dataclass(frozen=True)
class Cell:
    """One run of the protocol."""

    optimizer: str
    lr: float
    fraction: float
    seed: int
    phase: str

    def overrides(self, preset: str, run_dir: object) -> list[str]:
        """The run's overrides (the demo's and ``scripts.reproduce``'s), its provenance last
        but the run directory.

        A schedule-fraction run (``fraction < 1``, its own full cosine schedule) is evaluated
        at its end only: the paper's power-law fit ``L(N) = a + b N^-beta`` over run lengths
        and the effective-data fit read its final eval loss alone, so its evaluations along
        the way were points nothing read (~15% of such a run's time in the CPU demo). The
        final loss is the same either way: evaluation draws no random numbers and changes no
        state."""
        return [
            f"optimizer={self.optimizer}",
            f"optimizer.lr={self.lr}",
            f"train.fraction={self.fraction}",
            *([f"train.eval_every={FINAL_EVAL_ONLY}"] if self.fraction < 1 else []),
            f"seed={self.seed}",
            f"protocol.preset={preset}",
            f"protocol.phase={self.phase}",
            f"run_dir={run_dir}",
        ]

    def name(self) -> str:
        return f"lr{self.lr:g}_frac{self.fraction:g}_seed{self.seed}"


@dataclass
class Protocol:
    """What the protocol runs: its LR grids, seeds and fractions per optimizer."""

    preset: str
    optimizers: list[str]
    lrs: dict[str, list[float]]
    seeds: list[int] = field(default_factory=lambda: [0])  # the sweep's
    best_seeds: list[int] = field(default_factory=list)  # more seeds at each best LR
    fractions: list[float] = field(default_factory=list)  # < 1: schedule-fraction runs
    max_extend: int = 0
    tuned: dict[str, float] = field(default_factory=dict)  # optimizer -> tuned LR (no sweep)
    # Each fraction's seeds (None: the sweep's): several average the seed noise out of the
    # fit's points, whose differences between lengths are otherwise of the noise's size.
    fraction_seeds: list[int] | None = None
    runoff: int = 1  # the sweep's best LRs that run best_seeds before the best is chosen

    def runs_off(self, optimizer: str) -> bool:
        extra = set(self.best_seeds) - set(self.seeds)
        return self.runoff > 1 and optimizer not in self.tuned and bool(extra)

    @property
    def seeds_per_fraction(self) -> list[int]:
        return list(self.seeds if self.fraction_seeds is None else self.fraction_seeds)

    def full_runs(self, optimizer: str) -> int:
        """An optimizer's full-length runs before any extension: its sweep, then the extra
        seeds at its best LR (at each of the runoff's LRs)."""
        o = optimizer
        n = len(self.seeds) * (1 if o in self.tuned else len(self.lrs[o]))
        k = min(self.runoff, len(self.lrs[o])) if self.runs_off(o) else 1
        return n + k * len(set(self.best_seeds) - set(self.seeds))

    def count(self) -> int:
        """Runs before any extension."""
        fractions = len(self.seeds_per_fraction) * len([f for f in self.fractions if f < 1])
        return sum(self.full_runs(o) + fractions for o in self.optimizers)


Submit = Callable[[Cell], "Future[float | None]"]  # a future of the run's final eval loss


def seed_cells(p: Protocol, optimizer: str, lr: float) -> list[Cell]:
    return [Cell(optimizer, lr, 1.0, s, "seeds") for s in p.best_seeds if s not in p.seeds]


def runoff_lrs(p: Protocol, results: list[tuple[float, float | None]]) -> list[float]:
    """The sweep's ``p.runoff`` best LRs with a finite mean (best first)."""
    ranked = sorted(
        (best_lr((x, y) for x, y in results if x == lr)[1], lr) for lr in {x for x, _ in results}
    )
    return [lr for loss, lr in ranked if math.isfinite(loss)][: p.runoff]


def follow_ups(p: Protocol, optimizer: str, lr: float, seeds: bool = True) -> list[Cell]:
    """The runs at an optimizer's best (or tuned) LR: more seeds (unless a runoff ran them),
    then the fractions."""
    return (seed_cells(p, optimizer, lr) if seeds else []) + [
        Cell(optimizer, lr, f, s, "fractions")
        for f in p.fractions
        if f < 1
        for s in p.seeds_per_fraction
    ]


def run(
    p: Protocol, submit: Submit, log: Callable[[str], None] = print, dry: bool = False
) -> dict[str, float]:
    """Every run of ``p`` through ``submit``; returns the best LR per optimizer (none when no
    run of its sweep was finite: it gets no follow-ups). ``dry``: the runs' futures hold no
    losses, and follow-ups are shown at the grid's middle LR. A :class:`CannotStart` from a
    future propagates (the caller cancels what has not started)."""
    sweeps: dict[Future, Cell] = {}  # the runs that decide the best LR
    results: dict[str, list[tuple[float, float | None]]] = {o: [] for o in p.optimizers}
    extended = dict.fromkeys(p.optimizers, 0)
    runoff: dict[str, list[float]] = {}  # optimizer -> the LRs in its runoff
    follow: list[Future] = []
    best: dict[str, float] = {}

    def go(cell: Cell) -> None:
        sweeps[submit(cell)] = cell

    for o in p.optimizers:
        for lr in [p.tuned[o]] if o in p.tuned else p.lrs[o]:
            for s in p.seeds:
                go(Cell(o, lr, 1.0, s, "tuned" if o in p.tuned else "sweep"))
    while sweeps:
        done, _ = wait(list(sweeps), return_when=FIRST_COMPLETED)
        for f in done:
            cell = sweeps.pop(f)
            o = cell.optimizer
            results[o].append((cell.lr, f.result()))
            if any(c.optimizer == o for c in sweeps.values()):
                continue  # its sweep (or runoff) is still running
            if o in runoff:  # the runoff is done: the lowest mean over every seed wins
                found = best_lr(x for x in results[o] if x[0] in runoff[o])
                best[o] = found[0] if found is not None else runoff[o][0]
                log(f"protocol: {o}'s runoff chose lr {best[o]:g} (mean over every seed)")
                follow += [submit(c) for c in follow_ups(p, o, best[o], seeds=False)]
                continue
            nxt = None if o in p.tuned else edge_extension(results[o])
            if nxt is not None and extended[o] < p.max_extend:
                extended[o] += 1
                log(f"protocol: best {o} lr is on its grid's edge; adding lr {nxt:g}")
                for s in p.seeds:
                    go(Cell(o, nxt, 1.0, s, "extend"))
                continue
            found = best_lr(results[o])
            if o in p.tuned:
                lr = p.tuned[o]
            elif found is not None and math.isfinite(found[1]):
                lr = found[0]
            elif dry:
                lrs = p.lrs[o]
                lr = lrs[len(lrs) // 2]
            else:
                log(f"protocol: no {o} run of the sweep ended finite: no follow-up runs")
                continue
            lrs = runoff_lrs(p, results[o]) if p.runs_off(o) and not dry else [lr]
            if len(lrs) > 1:
                runoff[o] = lrs
                log(
                    f"protocol: {o}'s best lrs {', '.join(f'{x:g}' for x in lrs)} run "
                    f"seeds {', '.join(str(c.seed) for c in seed_cells(p, o, lr))} (the runoff)"
                )
                for x in lrs:
                    for c in seed_cells(p, o, x):
                        go(c)
                continue
            best[o] = lr
            follow += [submit(c) for c in follow_ups(p, o, lr)]
    for f in follow:
        f.result()
    return best
