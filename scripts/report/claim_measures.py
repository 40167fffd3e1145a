"""The measures the claims scorecard tests (:mod:`scripts.report.claims`), each computed
once per seed: a seed is one replicate of the whole experiment (the same initialisation and
data order for every optimizer and ablation), so every measure's values are paired by seed.

A measure takes the experiments of one scope (an experiment; a large and a small batch of one
model; a reference with its ablations) and the claim's ``args``, and returns
:class:`Evidence`: the per-seed values, or why they are missing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from scripts.measures import INF, crossing
from scripts.report.load import RunDir


@dataclass
class Experiment:
    """A study experiment as the scorecard reads it: each optimizer's full-length runs at its
    best LR, by seed."""

    name: str
    role: str
    reference: str | None
    runs: dict[str, dict[int, RunDir]]
    model_name: str | None = None  # before any run (the plan's); else the runs' model

    def frequency(self, optimizer: str) -> int | None:
        seeds = self.runs.get(optimizer) or {}
        return next((r.precondition_frequency for r in seeds.values()), None)

    @property
    def model(self) -> str:
        runs = (r.model for s in self.runs.values() for r in s.values())
        return self.model_name or next(runs, "?")


@dataclass
class Evidence:
    """A measure's per-seed values (or a reason it could not be measured)."""

    values: list[float] = field(default_factory=list)
    missing: str | None = None
    deterministic: bool = False
    parts: list[tuple[str, Evidence]] = field(default_factory=list)  # a claim over many cells

    @property
    def n(self) -> int:
        return len(self.values)

    def interval(self) -> tuple[float, float, float]:
        """``(low, mean, high)``: mean +- standard deviation; the range with an infinite value."""
        v = self.values
        if any(not math.isfinite(x) for x in v):
            return min(v), statistics.fmean(v) if len(set(v)) == 1 else math.nan, max(v)
        m = statistics.fmean(v)
        sd = statistics.stdev(v) if len(v) > 1 and not self.deterministic else 0.0
        return m - sd, m, m + sd


def final_loss(r: RunDir) -> float:
    return r.final_eval_loss if r.completed and r.final_eval_loss is not None else INF


def _find(scope: list[Experiment], optimizer: str) -> dict[int, RunDir]:
    """An optimizer's runs in the scope: an ablation's own before its reference's."""
    for e in sorted(scope, key=lambda e: e.reference is None):
        if e.runs.get(optimizer):
            return e.runs[optimizer]
    return {}


def _paired(
    scope: list[Experiment], names: list[str]
) -> tuple[list[dict[int, RunDir]], list[int]] | str:
    """Each optimizer's runs and the seeds they all have, or what is missing."""
    runs = [_find(scope, n) for n in names]
    gone = [n for n, r in zip(names, runs, strict=True) if not r]
    if gone:
        return f"no {', '.join(gone)} runs"
    return runs, sorted(set.intersection(*(set(r) for r in runs)))


def saved_by_seed(scope: list[Experiment], a: dict, key: str) -> dict[int, float] | str:
    """Per seed, 1 - (to reach AdamW's final loss of the seed) mine / the other's; AdamW's
    own: its full length (it reaches its final loss at its last iteration by definition)."""
    got = _paired(scope, ["adamw", a["optimizer"], a["versus"]])
    if isinstance(got, str):
        return got
    (base, mine, other), seeds = got
    idx = 0 if key == "steps" else 1
    vals = {}
    for s in seeds:
        target = final_loss(base[s])

        def cost(r: RunDir, t: float = target) -> float:
            if r.optimizer == "adamw":
                return float(r.steps) if idx == 0 else r.train_seconds
            hist = [vars(e) for e in r.eval_history] if r.completed else []
            return crossing(hist, t)[idx]

        c, ref = cost(mine[s]), cost(other[s])
        if (math.isinf(c) and math.isinf(ref)) or not ref > 0:
            continue  # neither reached (or no time recorded): no saving for this seed
        vals[s] = -INF if math.isinf(c) else 1.0 - c / ref
    return vals or "no seed of either reached the target"


def _evidence(got: dict[int, float] | str) -> Evidence:
    return Evidence(missing=got) if isinstance(got, str) else Evidence(list(got.values()))


def iterations_saved(scope: list[Experiment], a: dict) -> Evidence:
    return _evidence(saved_by_seed(scope, a, "steps"))


def wall_clock_saved(scope: list[Experiment], a: dict) -> Evidence:
    return _evidence(saved_by_seed(scope, a, "seconds"))


def batch_gain(scope: list[Experiment], a: dict) -> Evidence:
    """Per seed, the iteration saving at the large batch minus at the small (same model)."""
    large, small = (saved_by_seed([e], a, "steps") for e in scope)
    if isinstance(large, str) or isinstance(small, str):
        return Evidence(missing=large if isinstance(large, str) else str(small))
    vals = [large[s] - small[s] for s in sorted(set(large) & set(small))]
    vals = [v for v in vals if not math.isnan(v)]  # never reached at either batch: no gain
    return Evidence(vals) if vals else Evidence(missing="reached at neither batch")


def _ladder(scope: list[Experiment], optimizer: str) -> dict[int, dict[int, RunDir]]:
    """frequency -> seed -> run, over the ladder's experiments and its reference."""
    return {f: e.runs[optimizer] for e in scope if (f := e.frequency(optimizer)) is not None}


def beats_adamw_at_every_frequency(scope: list[Experiment], a: dict) -> Evidence:
    base = _find(scope, "adamw")
    parts = []
    for o in a["optimizers"]:
        for f, runs in sorted(_ladder(scope, o).items()):
            seeds = sorted(set(base) & set(runs))
            parts.append(
                (
                    f"{o} at {f}",
                    Evidence([final_loss(base[s]) - final_loss(runs[s]) for s in seeds]),
                )
            )
    if not base or not parts:
        return Evidence(missing="no AdamW run or no frequency ladder")
    weakest = min(parts, key=lambda p: p[1].interval()[1] if p[1].values else -INF)[1]
    return Evidence(weakest.values, parts=parts)


def loss_gap(scope: list[Experiment], a: dict) -> Evidence:
    if a.get("at") == "lowest_frequency":
        mine, other = _ladder(scope, a["optimizer"]), _ladder(scope, a["versus"])
        common = sorted(set(mine) & set(other))
        if not common:
            return Evidence(
                missing=f"no frequency that both {a['optimizer']} and {a['versus']} ran"
            )
        x, y = mine[common[0]], other[common[0]]
    else:
        got = _paired(scope, [a["optimizer"], a["versus"]])
        if isinstance(got, str):
            return Evidence(missing=got)
        x, y = got[0]
    return Evidence([final_loss(x[s]) - final_loss(y[s]) for s in sorted(set(x) & set(y))])


def degrades_slower(scope: list[Experiment], a: dict) -> Evidence:
    mine, other = _ladder(scope, a["optimizer"]), _ladder(scope, a["versus"])
    common = sorted(set(mine) & set(other))
    if len(common) < 2:
        return Evidence(missing="fewer than 2 frequencies with both optimizers")
    lo, hi = common[0], common[-1]
    seeds = sorted(set(mine[lo]) & set(mine[hi]) & set(other[lo]) & set(other[hi]))
    return Evidence(
        [
            (final_loss(other[hi][s]) - final_loss(other[lo][s]))
            - (final_loss(mine[hi][s]) - final_loss(mine[lo][s]))
            for s in seeds
        ]
    )


def memory_ratio(scope: list[Experiment], a: dict) -> Evidence:
    """Optimizer state plus an fp32 gradient (the paper's accounting), as the run measured
    its state."""

    def floats(o: str) -> float | None:
        r = next(iter(_find(scope, o).values()), None)
        if r is None or not r.optimizer_state_bytes or not r.params_total:
            return None
        return r.optimizer_state_bytes + 4 * r.params_total

    mine, other = floats(a["optimizer"]), floats(a["versus"])
    if mine is None or other is None:
        return Evidence(missing=f"no {a['optimizer']} or {a['versus']} run with its state size")
    return Evidence([mine / other], deterministic=True)


MEASURES: dict[str, Callable[[list[Experiment], dict], Evidence]] = {
    f.__name__: f
    for f in (
        iterations_saved,
        wall_clock_saved,
        batch_gain,
        beats_adamw_at_every_frequency,
        loss_gap,
        degrades_slower,
        memory_ratio,
    )
}
PERCENT = {"iterations_saved", "wall_clock_saved", "batch_gain"}
