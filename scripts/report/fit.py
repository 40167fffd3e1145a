"""The paper's fit (Vyas et al. 2024, Sec. 6): ``L(N) = a + b N^(-beta)`` over the final
losses of runs at several lengths; a fit pinned at a parameter bound does not describe the
data and says why, with the data's own evidence.

With several seeds at every length the fit is weighted least squares, each point by
``1 / s_N^2`` (``s_N``: the sample standard deviation of the final losses at its length,
floored at ``SD_FLOOR`` times their median so that a length whose seeds agree by chance does
not take all the weight). Short runs spread far more than full ones (the CPU demo at 256
tokens per step: 0.052 at 40% of the steps, 0.0064 at 100%, results/regime/batch.md), and
ordinary least squares lets that noise pick the curve's shape: there it pinned AdamW's
asymptote at 0 (rmse 0.0340 against 0.0355 for an interior fit). With one run per length
the fit is unweighted, as the paper's."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field

import numpy as np

from scripts.measures import INF

BETA_MIN, BETA_MAX = 1e-3, 5.0
SD_FLOOR = 0.25


@dataclass
class Fit:
    ok: bool
    points: list[tuple[float, float]]
    reason: str | None = None
    a: float | None = None
    b: float | None = None
    beta: float | None = None
    residuals: list[float] = field(default_factory=list)
    rmse: float | None = None
    weighting: str = "none"

    def steps_for(self, target: float) -> float:
        """N with ``a + b N^-beta = target`` (inf when the asymptote is at or above it)."""
        if not self.ok or target <= self.a:
            return INF
        return float((self.b / (target - self.a)) ** (1.0 / self.beta))


def power_law(n: np.ndarray, a: float, b: float, beta: float) -> np.ndarray:
    return a + b * np.power(n, -beta)


def _by_length(pts: list[tuple[float, float]]) -> dict[float, list[float]]:
    by_n: dict[float, list[float]] = {}
    for n, x in pts:
        by_n.setdefault(n, []).append(x)
    return by_n


def _shape_evidence(pts: list[tuple[float, float]]) -> str:
    """Why no power law fits, from the data: ``a + b N^-beta`` (b, beta > 0) is convex, so
    its loss drop per iteration shrinks as N grows; say so when a measured drop grows."""
    by_n = _by_length(pts)
    ns = sorted(by_n)
    means = [statistics.fmean(by_n[n]) for n in ns]
    rates = [(means[i] - means[i + 1]) / (ns[i + 1] - ns[i]) for i in range(len(ns) - 1)]
    if len(rates) < 2 or all(r1 <= r0 for r0, r1 in zip(rates, rates[1:], strict=False)):
        return ""
    # Three significant digits: at 4 decimals 0.00037 -> 0.00043 read "0.0004, 0.0004".
    steps = ", ".join(f"{r:.3g} ({ns[i]:g}->{ns[i + 1]:g})" for i, r in enumerate(rates))
    return (
        f"; loss drop per iteration does not shrink at every longer run: {steps}, where "
        "any a + b N^-beta's shrinks"
    )


def seed_weights(pts: list[tuple[float, float]]) -> tuple[list[float] | None, str]:
    """Each point's ``sigma`` for a weighted fit (see the module) and a line saying how;
    ``None`` (unweighted) unless every length has at least 2 runs."""
    by_n = _by_length(pts)
    if min(len(v) for v in by_n.values()) < 2:
        return None, "none (one run per length)"
    sd = {n: statistics.stdev(v) for n, v in by_n.items()}
    floor = max(SD_FLOOR * statistics.median(sd.values()), 1e-6)
    sigma = {n: max(s, floor) for n, s in sd.items()}
    spread = ", ".join(f"{sigma[n]:.3g} at {n:g}" for n in sorted(sigma))
    return [sigma[n] for n, _ in pts], f"1/s^2, s per length: {spread}"


def fit_power_law(steps: list[float], losses: list[float | None]) -> Fit:
    """Least-squares fit of ``L(N) = a + b N^-beta``, weighted by the seeds' spread at each
    length when there are several (:func:`seed_weights`); needs at least 3 distinct N."""
    pts = sorted(
        {
            (float(n), float(x))
            for n, x in zip(steps, losses, strict=True)
            if x is not None and math.isfinite(x)
        }
    )
    if len({n for n, _ in pts}) < 3:
        return Fit(
            False, pts, f"too few run lengths for a fit ({len({n for n, _ in pts})}; need 3)"
        )
    from scipy.optimize import curve_fit

    n = np.array([p[0] for p in pts])
    loss = np.array([p[1] for p in pts])
    sigma, weighting = seed_weights(pts)
    p0 = (max(0.0, loss.min() - 0.5), (loss.max() - loss.min() + 0.5) * n.min() ** 0.5, 0.5)
    # A cross-entropy asymptote is >= 0; beta in [BETA_MIN, BETA_MAX].
    lower, upper = [0.0, 0.0, BETA_MIN], [np.inf, np.inf, BETA_MAX]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's covariance warning for exact fits
            (a, b, beta), _ = curve_fit(
                power_law, n, loss, p0=p0, sigma=sigma, bounds=(lower, upper), maxfev=20000
            )
    except (RuntimeError, ValueError) as e:
        return Fit(False, pts, f"fit failed: {e}")
    resid = (loss - power_law(n, a, b, beta)).tolist()
    rmse = float(np.sqrt(np.mean(np.square(resid))))
    at_bound = [
        name
        for name, v, lo, hi in (("a", a, 0.0, None), ("beta", beta, BETA_MIN, BETA_MAX))
        if abs(v - lo) <= 1e-6 * max(1.0, abs(lo)) or (hi is not None and abs(v - hi) <= 1e-6 * hi)
    ]
    if at_bound:
        return Fit(
            False,
            pts,
            f"no valid fit ({', '.join(at_bound)} at its bound: these losses do not follow "
            f"a + b N^-beta){_shape_evidence(pts)}",
            float(a),
            float(b),
            float(beta),
            resid,
            rmse,
            weighting,
        )
    return Fit(True, pts, None, float(a), float(b), float(beta), resid, rmse, weighting)
