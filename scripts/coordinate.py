"""Coordinate descent over a declared search space, as a pure function of the results so far.

A space (``configs/tune/*.yaml``) gives, per optimizer, axes: a hyperparameter, a grid and
the incumbent's start value. The search (Wen et al. 2025's protocol; the SOAP paper tuned the
LR first, then other axes against it):

1. evaluate the start configuration; when ``threshold: seeds``, also ``noise_seeds`` more
   seeds of it: the noise threshold is their sample standard deviation;
2. sweep one axis at a time with the others at the incumbent (every grid value, in one
   round whose trials can run in parallel);
3. move to the round's best value only when it beats the incumbent by more than the threshold;
4. cycle over the axes until a full pass moves nothing, or the budget (distinct
   configurations evaluated) is spent.

:func:`replay` recomputes all of it from the results (a mapping from a configuration's key to
its loss): whichever worker asks, after whatever interruption, gets the same incumbent and the
same next configurations. Diverged or crashed trials have loss ``inf``: results, not errors.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Axis name -> the training config key it sets (Hydra override), per optimizer family.
AXES: dict[str, str] = {
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "warmup": "schedule.warmup_fraction",
    "beta1": "optimizer.betas.0",
    "beta2": "optimizer.betas.1",
    "eps": "optimizer.eps",
    "grad_clip": "train.grad_clip",
    "precondition_frequency": "optimizer.precondition_frequency",
    "shampoo_beta": "optimizer.shampoo_beta",
    "epsilon": "optimizer.epsilon",
    "momentum": "optimizer.momentum",
    "adamw_lr": "optimizer.adamw_lr",
}
OPTIMIZER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "optimizer"


def known_optimizers() -> list[str]:
    """Every optimizer with a config file (``configs/optimizer/<name>.yaml``): ours and any
    third-party class added the README's way."""
    return sorted(p.stem for p in OPTIMIZER_CONFIGS.glob("*.yaml"))


class SpaceError(ValueError):
    """A bad search space, in one line naming the fix."""


@dataclass
class Axis:
    name: str
    grid: list[float]
    start: float

    @property
    def key(self) -> str:
        return AXES[self.name]


@dataclass
class Space:
    axes: dict[str, list[Axis]]  # optimizer -> axes, in sweep order
    threshold: float | None  # None: measured from seeds
    noise_seeds: int = 2
    source: str = ""


def _grid(spec: dict[str, Any], where: str) -> list[float]:
    if "values" in spec:
        vals = [float(v) for v in spec["values"]]
    elif "log" in spec or "linear" in spec:
        kind = "log" if "log" in spec else "linear"
        lo, hi, n = spec[kind]["low"], spec[kind]["high"], int(spec[kind]["points"])
        if n < 1 or lo <= 0 and kind == "log" or hi < lo:
            raise SpaceError(f"{where}: {kind} grid needs 0 < low <= high and points >= 1")
        if n == 1:
            vals = [float(lo)]
        elif kind == "log":
            vals = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
        else:
            vals = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
        vals = [float(f"{v:.6g}") for v in vals]
    else:
        raise SpaceError(
            f"{where}: give the grid as values: [...], log: {{...}} or linear: {{...}}"
        )
    if not vals:
        raise SpaceError(f"{where}: the grid is empty: give at least one value")
    return vals


def load_space(path: str | Path, optimizers: list[str]) -> Space:
    """Read and check a space file; only ``optimizers`` need axes in it."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise SpaceError(f"space file {path} does not exist: see configs/tune/")
    raw = yaml.safe_load(path.read_text()) or {}
    th = raw.get("threshold", "seeds")
    if th != "seeds" and not (isinstance(th, (int, float)) and th >= 0):
        raise SpaceError(f"{path}: threshold must be a number >= 0 or 'seeds', not {th!r}")
    axes: dict[str, list[Axis]] = {}
    spaces = raw.get("optimizers") or {}
    known = known_optimizers()
    for opt in spaces:
        if opt not in known:
            raise SpaceError(
                f"{path}: unknown optimizer {opt!r}: use {', '.join(known)}, or add "
                f"configs/optimizer/{opt}.yaml"
            )
    for opt in optimizers:
        if opt not in known:
            raise SpaceError(
                f"tune.optimizers: unknown optimizer {opt!r}: use {', '.join(known)}, or add "
                f"configs/optimizer/{opt}.yaml"
            )
        if opt not in spaces:
            raise SpaceError(f"{path} has no axes for {opt}: add optimizers.{opt} to it")
        axes[opt] = []
        for spec in spaces[opt]:
            name = spec.get("name")
            where = f"{path}: {opt}.{name}"
            if name not in AXES:
                raise SpaceError(f"{where}: unknown axis: use one of {', '.join(AXES)}")
            grid = _grid(spec, where)
            start = float(spec.get("start", grid[len(grid) // 2]))
            if not any(math.isclose(start, v, rel_tol=1e-9) for v in grid):
                raise SpaceError(f"{where}: start {start:g} is not in its grid {grid}")
            axes[opt].append(Axis(name, grid, start))
        names = [a.name for a in axes[opt]]
        if len(set(names)) != len(names):
            raise SpaceError(f"{path}: {opt} names an axis twice")
    return Space(
        axes, None if th == "seeds" else float(th), int(raw.get("noise_seeds", 2)), str(path)
    )


def key(config: dict[str, float], seed: int = 0) -> str:
    return json.dumps({"config": config, "seed": seed}, sort_keys=True)


@dataclass
class State:
    """Where the search stands, given the results so far."""

    incumbent: dict[str, float]
    loss: float | None
    threshold: float | None
    pending: list[tuple[dict[str, float], int]]  # configurations (and seeds) to evaluate next
    done: bool
    passes: int = 0
    moves: list[str] = field(default_factory=list)


def replay(axes: list[Axis], threshold: float | None, noise_seeds: int, results: dict[str, float],
           budget: int) -> State:  # fmt: skip
    """The search so far, recomputed from ``results`` (configuration key -> loss)."""
    inc = {a.name: a.start for a in axes}
    spent = len(results)
    first = [(dict(inc), s) for s in range(1 + (noise_seeds if threshold is None else 0))]
    missing = [c for c in first if key(*c) not in results]
    if missing:
        return State(inc, None, threshold, missing if spent < budget else [], spent >= budget)
    seeds = [results[key(*c)] for c in first]
    inc_loss = seeds[0]
    if threshold is None:
        finite = [x for x in seeds if math.isfinite(x)]
        threshold = statistics.stdev(finite) if len(finite) > 1 else 0.0
    moves: list[str] = []
    passes = 0
    while True:
        moved = False
        for axis in axes:
            cands = [dict(inc, **{axis.name: v}) for v in axis.grid if v != inc[axis.name]]
            todo = [(c, 0) for c in cands if key(c) not in results]
            if todo:  # the round in progress; never more trials than the budget allows
                stop = spent >= budget
                todo = todo[: max(0, budget - spent)]
                return State(inc, inc_loss, threshold, todo, stop, passes, moves)
            best = min(cands, key=lambda c: results[key(c)], default=None)
            if best is not None and results[key(best)] < inc_loss - threshold:
                moves.append(f"{axis.name}: {inc[axis.name]:g} -> {best[axis.name]:g}")
                inc, inc_loss, moved = best, results[key(best)], True
        passes += 1
        if not moved:
            return State(inc, inc_loss, threshold, [], True, passes, moves)


def overrides(config: dict[str, float], fixed: dict[str, Any] | None = None) -> list[str]:
    """Hydra overrides for a configuration; indexed keys (``optimizer.betas.0``) become one
    list override, the other index taken from ``fixed`` or the optimizer's default."""
    out: list[str] = []
    lists: dict[str, dict[int, float]] = {}
    for name, v in sorted(config.items()):
        k = AXES[name]
        head, _, idx = k.rpartition(".")
        if idx.isdigit():
            lists.setdefault(head, {})[int(idx)] = v
        elif name == "precondition_frequency":
            out.append(f"regime.precondition_frequency={int(v)}")
        else:
            out.append(f"{k}={v:g}")
    for head, vals in lists.items():
        default = (fixed or {}).get(head, [0.95, 0.95])
        full = [vals.get(i, default[i]) for i in range(len(default))]
        out.append(f"{head}=[{','.join(f'{x:g}' for x in full)}]")
    return out
