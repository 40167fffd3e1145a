"""The measures and the comparison, as typed results (no formatting here).

Two measures (terms as in :mod:`scripts.clock`):

1. Crossing (:func:`scripts.measures.crossing`): the first iteration / training second at
   which a run's eval loss <= target, interpolated between evaluations. Over seeds: mean
   +- sample standard deviation; a saving is *significant* when the two intervals
   ``mean +- std`` do not overlap (needs >= 2 seeds on both sides).
2. The paper's method (Vyas et al. 2024, Sec. 6): the final losses of runs at several schedule
   fractions are fitted with ``L(N) = a + b N^(-beta)``; the iterations needed are the ``N``
   where the fit reaches the target, the wall-clock needed is that ``N`` times the measured
   seconds per step. A fit pinned at a parameter bound does not describe the data and is
   reported as such, never extrapolated.
3. Seed by seed (:mod:`scripts.report.paired`): each seed's saving at the baseline's final
   loss of that seed, as the claims scorecard measures it; printed as notes.

Each optimizer is compared at its best learning rate (:func:`scripts.measures.best_lr` over
full-length runs of the seeds every LR shares, i.e. the sweep's; after a runoff, over every
seed of the LRs in it). The default target is the
baseline's (AdamW's) final eval loss at full length (mean over its seeds at its best LR), as
in the paper. Crashed, diverged and never-reaching runs count as "not reached"
(infinite), never dropped.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from scripts.measures import INF, best_lr, crossing
from scripts.report.fit import Fit, fit_power_law
from scripts.report.load import RunDir
from scripts.report.paired import paired_notes


@dataclass
class Interval:
    """A measure over seeds: mean +- sample standard deviation."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        if not self.values or any(not math.isfinite(v) for v in self.values):
            return INF
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float | None:
        if self.n < 2 or not math.isfinite(self.mean):
            return None
        return statistics.stdev(self.values)

    def separated_from(self, other: Interval) -> bool | None:
        """Whether ``mean +- spread`` of the two do not overlap (None: too few seeds, or a
        side that never reached the target)."""
        if self.spread is None or other.spread is None:
            return None
        lo, hi = sorted((self, other), key=lambda i: i.mean)
        return lo.mean + lo.spread < hi.mean - hi.spread


@dataclass
class Saving:
    """``1 - mine / baseline`` (positive: fewer iterations or seconds than the baseline)."""

    value: float | None
    significant: bool | None = None


def _saving(mine: float | None, base: float | None) -> float | None:
    if mine is None or base is None or not (math.isfinite(base) and base > 0):
        return None
    return 1.0 - mine / base if math.isfinite(mine) else -INF


@dataclass
class Row:
    optimizer: str
    best_lr: float | None = None
    note: str | None = None
    final_eval_loss: Interval | None = None
    cross_steps: Interval | None = None
    cross_seconds: Interval | None = None
    fit: Fit | None = None
    fit_steps: float | None = None
    fit_seconds: float | None = None
    cost: dict[str, float | None] = field(default_factory=dict)
    savings: dict[str, Saving] = field(default_factory=dict)  # "<measure>_vs_<optimizer>"
    failed: list[str] = field(
        default_factory=list
    )  # statuses of best-LR runs that did not complete

    @property
    def compared(self) -> bool:
        return self.best_lr is not None


COST_KEYS = (
    "seconds_per_step",
    "fwd_bwd_seconds_per_step",
    "optim_seconds_per_step",
    "tokens_per_second",
    "optimizer_state_bytes",
    "optimizer_state_bytes_total",
    "peak_memory_bytes",
    "world_size",
)


@dataclass
class Comparison:
    """One (model, regime) group of runs."""

    name: str
    target: float | None
    baseline: str
    rows: list[Row]
    sweep: dict[str, dict[float, float]]  # optimizer -> lr -> mean final loss (full length)
    runs: list[RunDir]
    notes: list[str] = field(default_factory=list)
    target_given: bool = False  # --target, rather than the baseline's own final loss

    def row(self, optimizer: str) -> Row | None:
        return next((r for r in self.rows if r.optimizer == optimizer), None)

    def best_runs(self, optimizer: str) -> list[RunDir]:
        r = self.row(optimizer)
        if r is None or r.best_lr is None:
            return []
        return [
            x
            for x in self.runs
            if x.optimizer == optimizer
            and x.lr == r.best_lr
            and x.fraction == 1.0
            and main_frequency(x, self.runs)
        ]


@dataclass
class Analysis:
    comparisons: list[Comparison]


def main_frequency(r: RunDir, runs: list[RunDir]) -> bool:
    """Frequency-ablation runs (a non-default frequency) stay out of the headline."""
    freqs = [
        x.precondition_frequency
        for x in runs
        if x.optimizer == r.optimizer and x.precondition_frequency is not None
    ]
    if not freqs or r.precondition_frequency is None:
        return True
    return r.precondition_frequency == max(set(freqs), key=freqs.count)


def _final(r: RunDir) -> float | None:
    return r.final_eval_loss if r.completed else None


def _seeds_by_lr(full: list[RunDir]) -> dict[float, set[int]]:
    seeds: dict[float, set[int]] = {}
    for r in full:
        seeds.setdefault(r.lr, set()).add(r.seed)
    return seeds


def _like_with_like(full: list[RunDir]) -> list[RunDir]:
    """The full-length runs the best LR is chosen from: only the seeds that every swept LR
    has (the sweep's seed), when there are any. Extra seeds run at the winner alone would
    otherwise put a mean over several seeds against single runs of the other LRs, and the
    winner's expected regression to the mean could hand the choice to a runner-up that was
    never re-run. The extra seeds still give the best LR's interval."""
    seeds = _seeds_by_lr(full)
    common = set.intersection(*seeds.values()) if seeds else set()
    return [r for r in full if r.seed in common] if common else full


def _runoff(full: list[RunDir]) -> list[RunDir] | None:
    """The runs of a runoff (:mod:`scripts.experiments.protocol`): when two or more LRs ran
    more seeds than the rest, the best LR is chosen among them on the seeds they share, as
    the protocol chose it; None when there was no runoff."""
    seeds = _seeds_by_lr(full)
    if len(seeds) < 2:
        return None
    most = max(len(v) for v in seeds.values())
    top = [lr for lr, v in seeds.items() if len(v) == most]
    if len(top) < 2 or most == min(len(v) for v in seeds.values()):
        return None
    shared = set.intersection(*(seeds[lr] for lr in top))
    return [r for r in full if r.lr in top and r.seed in shared]


def compare(
    name: str, runs: list[RunDir], target: float | None, baseline: str = "adamw"
) -> Comparison:
    optimizers = sorted({r.optimizer for r in runs})
    sweep, best = {}, {}
    for opt in optimizers:
        full_all = [
            r for r in runs if r.optimizer == opt and r.fraction == 1.0 and main_frequency(r, runs)
        ]
        full = _like_with_like(full_all)
        by_lr: dict[float, list[float]] = {}
        for r in full:
            f = _final(r)
            by_lr.setdefault(r.lr, []).append(f if f is not None else INF)
        sweep[opt] = {lr: statistics.fmean(v) for lr, v in sorted(by_lr.items())}
        found = best_lr((r.lr, _final(r)) for r in (_runoff(full_all) or full))
        if found is not None:
            # the mean over every seed of the chosen LR (the sweep's value is the selected,
            # hence optimistically biased, one)
            at_best = [r for r in full_all if r.lr == found[0]]
            best[opt] = found[0], best_lr((r.lr, _final(r)) for r in at_best)[1]
    notes = []
    own_target = target is None  # the baseline's own final loss, as in the paper
    if target is None:
        if baseline in best and math.isfinite(best[baseline][1]):
            target = best[baseline][1]
        else:
            notes.append(f"baseline {baseline!r} has no completed full-length run: pass --target")
    rows = []
    for opt in optimizers:
        if opt not in best:
            rows.append(Row(opt, note="no full-length run"))
            continue
        lr = best[opt][0]
        mine = [r for r in runs if r.optimizer == opt and r.lr == lr and main_frequency(r, runs)]
        full = [r for r in mine if r.fraction == 1.0]
        row = Row(opt, best_lr=lr)
        row.final_eval_loss = Interval([f if (f := _final(r)) is not None else INF for r in full])
        row.failed = [r.status for r in full if not r.completed]
        for k in COST_KEYS:
            vals = [getattr(r, k) for r in mine if getattr(r, k) is not None]
            row.cost[k] = statistics.fmean(vals) if vals else None
        if target is not None:
            if own_target and opt == baseline:
                # The baseline reaches its own (mean) final loss at the end of its run, by
                # definition; a seed's curve crossing that mean earlier or never is seed noise
                # in the target, not in the baseline's length.
                cross = [(float(r.steps), r.train_seconds) for r in full]
            else:
                hist = [[vars(e) for e in r.eval_history] if r.completed else [] for r in full]
                cross = [crossing(h, target) for h in hist]
            row.cross_steps = Interval([c[0] for c in cross])
            row.cross_seconds = Interval([c[1] for c in cross])
            done = [r for r in mine if r.completed]
            row.fit = fit_power_law([r.steps for r in done], [r.final_eval_loss for r in done])
            if row.fit.ok:
                row.fit_steps = row.fit.steps_for(target)
                sps = row.cost["seconds_per_step"]
                row.fit_seconds = row.fit_steps * sps if sps is not None else None
        rows.append(row)
    _savings(rows, baseline, own_target)
    c = Comparison(name, target, baseline, rows, sweep, runs, notes, target_given=not own_target)
    c.notes += regime_checks(c) + timing_checks(c) + noise_floor(c) + paired_notes(c)
    return c


def noise_floor(c: Comparison) -> list[str]:
    """The smallest iteration saving this comparison could call significant, for the seeds it
    has. Significance asks the final-loss intervals (mean +- standard deviation) not to overlap,
    a gap of about two of the baseline's standard deviations; the baseline's own mean curve
    stays within that gap of the target over its last ``s`` of iterations, and a saving under
    ``s`` is that much of its curve: seed noise."""
    base = c.row(c.baseline)
    if base is None or base.final_eval_loss is None or c.target is None:
        return []
    runs = [r for r in c.best_runs(c.baseline) if r.completed and r.eval_history]
    if len(runs) < 2:
        return [
            f"{c.baseline} has one seed at its best LR: no saving can be called significant "
            "(run more seeds)"
        ]
    sd = statistics.stdev(r.final_eval_loss for r in runs)
    curves = [{e.step: e.eval_loss for e in r.eval_history} for r in runs]
    steps = sorted(set.intersection(*(set(x) for x in curves)))
    mean = [
        {"step": s, "train_seconds": 0.0, "eval_loss": statistics.fmean(x[s] for x in curves)}
        for s in steps
    ]
    at, _ = crossing(mean, c.target + 2 * sd)
    if not steps or not math.isfinite(at):
        return []
    floor = 1 - at / steps[-1]
    return [
        f"with {len(runs)} seeds ({c.baseline}'s final-loss standard deviation {sd:.3g}), the "
        f"smallest saving this report can call significant is about {100 * floor:.0f}%: "
        f"{c.baseline}'s own mean curve is within 2 standard deviations of the target over its "
        f"last {100 * floor:.0f}% of iterations"
    ]


def timing_checks(c: Comparison) -> list[str]:
    """Wall-clock compared across runs is only meaningful when runs of one optimizer agree
    with each other better than optimizers differ (runs at different times on a shared
    machine may not)."""
    per_opt = {}
    for r in c.rows:
        vals = [x.seconds_per_step for x in c.best_runs(r.optimizer) if x.seconds_per_step]
        if len(vals) > 1:
            per_opt[r.optimizer] = vals
    if len(per_opt) < 2:
        return []
    spread = max((max(v) - min(v)) / statistics.fmean(v) for v in per_opt.values())
    means = sorted(statistics.fmean(v) for v in per_opt.values())
    gap = min((b - a) / a for a, b in zip(means, means[1:], strict=False))
    if spread <= gap:
        return []
    return [
        f"timings are not comparable across optimizers: seconds per step vary by "
        f"{100 * spread:.0f}% between seeds of one optimizer, more than the {100 * gap:.0f}% "
        "between optimizers (runs at different times, or on a shared machine); trust the "
        "iteration columns"
    ]


def regime_checks(c: Comparison) -> list[str]:
    """The demo's criteria, checked on every comparison: each best LR is interior to its
    sweep, and no eval loss of a best-LR run rises above that run's first evaluation."""
    out = []
    for r in c.rows:
        if not r.compared:
            continue
        lrs = sorted(c.sweep.get(r.optimizer, {}))
        if len(lrs) >= 3 and r.best_lr in (lrs[0], lrs[-1]):
            out.append(
                f"{r.optimizer}: the best LR {r.best_lr:g} is at the edge of its sweep "
                f"({lrs[0]:g} ... {lrs[-1]:g}): extend the sweep"
            )
        elif len(lrs) < 3:
            out.append(
                f"{r.optimizer}: only {len(lrs)} learning rate(s) swept, so the best cannot be "
                "shown to lie inside the grid: sweep at least 3"
            )
        for run in c.best_runs(r.optimizer):
            h = [e.eval_loss for e in run.eval_history]
            if len(h) > 1 and max(h[1:]) > h[0]:
                out.append(
                    f"{r.optimizer} seed {run.seed}: eval loss rose to {max(h[1:]):.3f}, above its "
                    f"first evaluation {h[0]:.3f}"
                )
    if not out and any(r.compared for r in c.rows):
        out.append(
            "regime criteria met: every best LR is interior to its sweep, and no eval loss of "
            "a best-LR run rose above its first evaluation"
        )
    return out


def _savings(rows: list[Row], baseline: str, own_target: bool) -> None:
    by = {r.optimizer: r for r in rows}
    for r in rows:
        for ref in (baseline, "shampoo"):
            b = by.get(ref)
            if b is None or ref == r.optimizer or not r.compared or not b.compared:
                continue
            # Against the baseline's own final loss, the baseline's iterations have no spread
            # (it reaches its mean at its last iteration by definition); the seed noise is in
            # the target. The saving is then significant when, at the same full length, the
            # final losses' intervals are apart (and, for wall-clock, the times' too).
            own = own_target and baseline in (ref, r.optimizer)
            apart = r.final_eval_loss.separated_from(b.final_eval_loss) if own else None
            for m in ("cross_steps", "cross_seconds"):
                mine, base = getattr(r, m), getattr(b, m)
                if mine is not None and base is not None:
                    sig = mine.separated_from(base)
                    if own and m == "cross_steps":
                        sig = apart
                    elif own:
                        sig = None if apart is None or sig is None else apart and sig
                    r.savings[f"{m}_vs_{ref}"] = Saving(_saving(mine.mean, base.mean), sig)
            for m in ("fit_steps", "fit_seconds"):
                r.savings[f"{m}_vs_{ref}"] = Saving(_saving(getattr(r, m), getattr(b, m)))
            sm, sb = r.cost.get("optimizer_state_bytes"), b.cost.get("optimizer_state_bytes")
            if sm and sb:
                r.cost[f"state_ratio_vs_{ref}"] = sm / sb


def analyse(runs: list[RunDir], target: float | None, baseline: str = "adamw") -> Analysis:
    """One :class:`Comparison` per (model, regime) present, always the same shape."""
    groups: dict[str, list[RunDir]] = {}
    for r in runs:
        groups.setdefault(f"{r.model}/{r.regime}", []).append(r)
    return Analysis([compare(k, v, target, baseline) for k, v in sorted(groups.items())])
