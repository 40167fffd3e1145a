"""The benchmark's two shared measures, defined once (trainer, report, demo and reproduce use
these functions; terms as in :mod:`scripts.clock`).

* :func:`crossing`: the first (interpolated) iteration and training second at which a run's
  eval loss is at or below a target. Between two evaluations the loss is taken as linear,
  so the crossing is interpolated from the previous evaluation; a run whose first evaluation
  is already at or below the target reached it there. Non-finite losses never reach a
  target and are skipped as interpolation anchors.
* :func:`best_lr`: the learning rate with the lowest mean final eval loss over seeds, a run
  that crashed or diverged counting as infinite (never dropped); ties go to the smaller LR.
* :func:`edge_extension`: the next learning rate of a sweep whose best sits on its grid's edge
  (half a decade beyond it), so a best LR is shown to lie inside its grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

INF = float("inf")


def crossing_point(
    prev: tuple[float, float, float] | None, step: float, seconds: float, loss: float, target: float
) -> tuple[float, float] | None:
    """``(step, seconds)`` where the loss reaches ``target`` between ``prev`` =
    ``(step, seconds, loss)`` and the evaluation ``(step, seconds, loss)``, or None if this
    evaluation is above the target (or not finite)."""
    if not math.isfinite(loss) or loss > target:
        return None
    if prev is None or prev[2] <= loss:
        return float(step), float(seconds)
    s0, t0, l0 = prev
    f = (l0 - target) / (l0 - loss)
    return s0 + f * (step - s0), t0 + f * (seconds - t0)


def crossing(history: Sequence[Mapping[str, float]], target: float) -> tuple[float, float]:
    """(iteration, seconds) at which ``history`` (``step``, ``train_seconds``, ``eval_loss``
    per evaluation) first reaches ``target``; ``(inf, inf)`` if never."""
    prev = None
    for h in history:
        loss = h["eval_loss"]
        loss = float(loss) if loss is not None else math.nan
        hit = crossing_point(prev, h["step"], h["train_seconds"], loss, target)
        if hit is not None:
            return hit
        if math.isfinite(loss):
            prev = (float(h["step"]), float(h["train_seconds"]), loss)
    return INF, INF


def best_lr(results: Iterable[tuple[float, float | None]]) -> tuple[float, float] | None:
    """``(lr, mean final loss)`` of the best learning rate among ``(lr, final loss or None)``
    pairs (one per run; None = crashed/diverged, counted as infinite); None if no run."""
    by_lr: dict[float, list[float]] = {}
    for lr, loss in results:
        by_lr.setdefault(float(lr), []).append(
            float(loss) if loss is not None and math.isfinite(loss) else INF
        )
    if not by_lr:
        return None
    lr, losses = min(by_lr.items(), key=lambda kv: (sum(kv[1]) / len(kv[1]), kv[0]))
    return lr, sum(losses) / len(losses)


def half_decade(lr: float, direction: int) -> float:
    """The next value on the half-decade grid 1e-3, 3.16e-3, 1e-2, ... above or below ``lr``."""
    k = round(2 * math.log10(lr)) + direction
    return float(f"{10 ** (k / 2):.3g}")


def edge_extension(results: Iterable[tuple[float, float | None]]) -> float | None:
    """The LR half a decade beyond the best of a finished sweep when the best is the
    smallest or the largest LR swept (None: interior, fewer than 2 LRs, or nothing finite)."""
    results = list(results)
    found = best_lr(results)
    grid = sorted({float(lr) for lr, _ in results})
    if found is None or len(grid) < 2 or not math.isfinite(found[1]):
        return None
    if found[0] not in (grid[0], grid[-1]):
        return None
    return half_decade(found[0], +1 if found[0] == grid[-1] else -1)
