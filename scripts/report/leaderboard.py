"""The leaderboard of a comparison with more than the paper's three optimizers (``make
lineup``): every optimizer ranked by iterations to the baseline's target, with what a reader
of a ranking asks next - how sure (intervals, seeds reached), how fast per step, how much
memory - and the AlgoPerf-style performance profile over the report's experiments.

Ranked by mean iterations to the target over seeds (a seed that never reached it counts as
infinite, as everywhere in the report), then by mean final loss.
"""

from __future__ import annotations

import math

from scripts.report import tables
from scripts.report.analysis import Comparison, Row
from scripts.report.plots import Figure, profile_figure
from scripts.report.scale import seeds_reached
from scripts.report.tables import Table, fmt, interval, pct

MIN_OPTIMIZERS = 4  # the paper's three get the headline alone


def wanted(c: Comparison) -> bool:
    return sum(r.compared for r in c.rows) >= MIN_OPTIMIZERS


def _rank_key(r: Row) -> tuple[float, float]:
    it = r.cross_steps.mean if r.cross_steps else math.inf
    return it, r.final_eval_loss.mean if r.final_eval_loss else math.inf


def _speedup(c: Comparison, opt: str) -> str:
    """The effective-data speedup's cell (the baseline's is 1 by definition)."""
    if opt == c.baseline:
        return "1.00x"
    ed = tables.effective_data_of(c, opt)
    if ed is None:
        return "-"
    return f"{ed.ratio:.2f}x" if ed.ratio is not None else "not valid"


def _state_per_param(c: Comparison, opt: str) -> str:
    """Optimizer state in fp32 floats per model parameter (AdamW: 2)."""
    runs = c.best_runs(opt)
    rec = runs[0].record if runs else None
    if rec is None or not rec.optimizer_state_bytes or not rec.params_total:
        return "-"
    return f"{rec.optimizer_state_bytes / 4 / rec.params_total:.2f}"


def table(c: Comparison) -> Table:
    b = c.baseline
    base = c.row(b)
    base_sps = base.cost.get("seconds_per_step") if base else None
    rows = []
    ranked = sorted((r for r in c.rows if r.compared), key=_rank_key)
    for i, r in enumerate(ranked, 1):
        o = r.optimizer
        sps = r.cost.get("seconds_per_step")
        step = f"{sps / base_sps:.2f}x" if sps and base_sps else "-"
        reached = seeds_reached(r.cross_steps.values if r.cross_steps else [])
        rows.append([
            str(i), o, fmt(r.best_lr, 3), tables.final_cell(r), interval(r.cross_steps),
            pct(r.savings.get(f"cross_steps_vs_{b}")), interval(r.cross_seconds),
            pct(r.savings.get(f"cross_seconds_vs_{b}")), f"{reached.reached} of {reached.seeds}",
            _speedup(c, o), _state_per_param(c, o), step,
        ])  # fmt: skip
    return Table(
        "leaderboard (ranked by iterations to the target; * significant)",
        ["rank", "optimizer", "best lr", "final loss", "iterations to target", f"vs {b}",
         "wall-clock s to target", f"vs {b}", "seeds reached", "effective-data speedup",
         "state floats per parameter", f"s/step vs {b}"],
        rows,
    )  # fmt: skip


def profile(comparisons: list[Comparison]) -> list[Figure]:
    """Performance profiles over the report's experiments (its model/regime groups), in
    iterations and in wall-clock: for each tau, the fraction of experiments on which an
    optimizer reaches the target within tau x the best optimizer's (tau 1 to 4)."""
    figs = []
    for key, attr, what in (("profile_iterations", "cross_steps", "iterations"),
                            ("profile_wallclock", "cross_seconds", "wall-clock")):  # fmt: skip
        grid = {
            c.name: {r.optimizer: getattr(r, attr).mean for r in c.rows if getattr(r, attr)}
            for c in comparisons
        }
        n = len(grid)
        title = f"Performance profile ({what} to the target, over {n} experiment{'s' * (n != 1)})"
        figs.append(profile_figure(key, title, grid))
    return figs
