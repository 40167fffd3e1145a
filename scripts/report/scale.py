"""Measures for comparing optimizers across experiments (issue 19), pure functions.

* :func:`effective_data`: the baseline's final loss against training tokens over its
  schedule fractions, ``L(D) = a + b D^-beta`` (:func:`scripts.report.fit.fit_power_law`
  on tokens), inverted at another optimizer's final loss: the tokens the baseline would need,
  ``D_eff``; the speedup is ``D_eff / D``. A faster optimizer's loss lies below the baseline's
  longest run, so the fit extrapolates, as in Wen et al. 2025, but at most ``MAX_EXTRAPOLATION``
  times the longest fitted length. Not valid (with the reason) when the fit is not (a
  parameter at its bound, fewer than 3 lengths) or when the loss lies outside that range
  (above the shortest run's loss, at or below the asymptote, or further than that factor).
* :func:`seeds_reached`: how many seeds reached the target, and the median iterations over
  seeds (AlgoPerf counts a result when most trials reach it), so one seed's near miss reads as
  a near miss rather than flipping the headline.
* :func:`performance_profile`: AlgoPerf-style profiles: for each tau, the fraction of
  experiments on which an optimizer reaches the target within tau times the best optimizer's
  iterations (or seconds) on that experiment.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scripts.report.fit import fit_power_law

MAX_EXTRAPOLATION = 4.0  # D_eff at most this many times the baseline's longest fitted run


@dataclass
class EffectiveData:
    ratio: float | None  # D_eff / D
    d_eff: float | None
    reason: str | None = None


def effective_data(
    baseline_tokens: list[float], baseline_losses: list[float | None], loss: float, tokens: float
) -> EffectiveData:
    """``D_eff / D`` for a run that reached ``loss`` after ``tokens`` (see the module)."""
    fit = fit_power_law(baseline_tokens, baseline_losses)
    if not fit.ok:
        return EffectiveData(None, None, fit.reason)
    fitted = [x for _, x in fit.points]
    if not math.isfinite(loss):
        return EffectiveData(None, None, "the run has no final loss")
    if loss <= fit.a:
        return EffectiveData(
            None, None, f"loss {loss:.4f} is at or below the fit's asymptote {fit.a:.4f}"
        )
    if loss > max(fitted):
        return EffectiveData(
            None, None, f"loss {loss:.4f} is outside the fitted range (above {max(fitted):.4f})"
        )
    d_eff = fit.steps_for(loss)
    longest = max(n for n, _ in fit.points)
    if d_eff > MAX_EXTRAPOLATION * longest:
        return EffectiveData(
            None,
            None,
            f"loss {loss:.4f} is outside the fitted range (the fit would extrapolate to "
            f"{d_eff / longest:.1f}x its longest run; at most {MAX_EXTRAPOLATION:g}x)",
        )
    return EffectiveData(d_eff / tokens, d_eff)


@dataclass
class SeedsReached:
    reached: int
    seeds: int
    median: float  # iterations over seeds (inf when most did not reach)

    def __str__(self) -> str:
        med = "not reached" if math.isinf(self.median) else f"median {self.median:.1f}"
        return f"{self.reached} of {self.seeds} seeds reached ({med})"


def seeds_reached(iterations: list[float]) -> SeedsReached:
    """Per seed, the iterations to the target (inf: not reached)."""
    reached = sum(math.isfinite(x) for x in iterations)
    return SeedsReached(
        reached, len(iterations), statistics.median(iterations) if iterations else math.inf
    )


def performance_profile(
    table: dict[str, dict[str, float]], taus: list[float] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """``table[experiment][optimizer]``: iterations (or seconds) to the target, inf when not
    reached. Returns optimizer -> [(tau, fraction of experiments within tau x the best)]."""
    taus = taus or [1.0 + 0.25 * i for i in range(13)]  # 1 ... 4
    optimizers = sorted({o for row in table.values() for o in row})
    out: dict[str, list[tuple[float, float]]] = {}
    for o in optimizers:
        pts = []
        for tau in taus:
            ok = 0
            for row in table.values():
                best = min((v for v in row.values() if math.isfinite(v)), default=math.inf)
                mine = row.get(o, math.inf)
                ok += math.isfinite(mine) and mine <= tau * best
            pts.append((tau, ok / len(table) if table else 0.0))
        out[o] = pts
    return out
