"""Savings seed by seed, next to the report's interval rule. A seed is one replicate: the same
initialisation and data order for every optimizer (the protocol varies ``seed`` alone), so two
optimizers' runs of one seed are a pair, and a pair's saving carries less of the seeds' noise
than the difference of two means (AdamW's final loss spreads 0.03 over seeds at the demo's
size, and each seed's other optimizers move with it). The measure is the claims scorecard's
(:func:`scripts.report.claim_measures.saved_by_seed`): per seed, ``1 - N_mine / N_other``,
``N`` the iterations to the baseline's final loss *of that seed* (the baseline at its full
length); the interval is mean +- sample standard deviation over seeds, apart from zero when
it does not contain it."""

from __future__ import annotations

import math
import statistics
from typing import Any

from scripts.report.claim_measures import Experiment, saved_by_seed


def paired_notes(c: Any) -> list[str]:
    """For a :class:`scripts.report.analysis.Comparison` (which calls this; typed loosely to
    keep the import one-way): one line per optimizer against the baseline and against
    Shampoo, where both have at least 2 seeds in common at their best LRs (none with a target
    given by hand: the pairs' targets are the baseline's own)."""
    if c.target_given or c.row(c.baseline) is None:
        return []
    runs = {r.optimizer: {x.seed: x for x in c.best_runs(r.optimizer)} for r in c.rows}
    scope = [Experiment(c.name, "comparison", None, runs)]
    out = []
    for r in c.rows:
        for ref in dict.fromkeys((c.baseline, "shampoo")):
            if r.optimizer in (c.baseline, ref) or not runs.get(ref) or not runs[r.optimizer]:
                continue
            got = saved_by_seed(scope, {"optimizer": r.optimizer, "versus": ref}, "steps")
            if isinstance(got, str) or len(got) < 2:
                continue
            vals = [got[s] for s in sorted(got)]
            each = ", ".join(f"{100 * v:.0f}%" if math.isfinite(v) else "not reached" for v in vals)
            if not any(math.isfinite(v) for v in vals):
                continue  # the verdict line already says it never reached the target
            if not all(math.isfinite(v) for v in vals):
                out.append(
                    f"seed by seed, {r.optimizer} against {ref}: {each} ({len(vals)} seeds; "
                    "a seed that never reached the target has no saving)"
                )
                continue
            m, sd = statistics.fmean(vals), statistics.stdev(vals)
            apart = "apart from zero" if abs(m) > sd else "not apart from zero"
            out.append(
                f"seed by seed (same init and data), {r.optimizer} against {ref}: "
                f"{100 * m:.1f}% [{100 * (m - sd):.1f}, {100 * (m + sd):.1f}] of the iterations "
                f"saved to reach {c.baseline}'s final loss of each seed, {apart} "
                f"({len(vals)} seeds: {each})"
            )
    return out
