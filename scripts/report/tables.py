"""Rendering an analysis as tables (markdown or HTML from the same cells) and verdict lines."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.report.analysis import Comparison, Interval, Row, Saving
from scripts.report.scale import EffectiveData, effective_data, seeds_reached


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "not reached" if x > 0 else "never"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def pct(s: Saving | None) -> str:
    if s is None or s.value is None:
        return "-"
    if math.isinf(s.value):
        return "did not reach it"
    mark = {True: " *", False: "", None: ""}[s.significant]
    return f"{100 * s.value:+.1f}%{mark}"


def interval(iv: Interval | None, digits: int = 4) -> str:
    if iv is None:
        return "-"
    if iv.spread is None:
        return fmt(iv.mean, digits)
    return f"{iv.mean:.{digits}g} ± {iv.spread:.2g}"


def _mb(v: float | None) -> str:
    return f"{v / 2**20:.1f}" if v else "-"


def has_fits(c: Comparison) -> bool:
    """A fit saving exists: the baseline and at least one other optimizer fit validly."""
    ok = {r.optimizer for r in c.rows if r.fit is not None and r.fit.ok}
    return c.baseline in ok and len(ok) > 1


def final_cell(r: Row) -> str:
    """The final loss, or what became of the runs that have none (crashed, diverged)."""
    if not r.failed:
        return interval(r.final_eval_loss)
    n = r.final_eval_loss.n if r.final_eval_loss is not None else len(r.failed)
    counts = ", ".join(f"{r.failed.count(s)} {s}" for s in sorted(set(r.failed)))
    if len(r.failed) >= n:
        return counts
    done = Interval([x for x in r.final_eval_loss.values if math.isfinite(x)])
    return f"{interval(done)} ({counts})"


def headline(c: Comparison) -> Table:
    """The compact headline (<= 8 columns): crossing measures vs the baseline; the fit's
    iterations only when a fit saving exists (valid fits for the baseline and another)."""
    b = c.baseline
    header = ["optimizer", "best lr", "final loss", "iterations to target", f"vs {b}"]
    header += ["wall-clock s to target", f"vs {b}"]
    fits = has_fits(c)
    if fits:
        header += [f"fit: iterations vs {b}"]
    rows = []
    for r in c.rows:
        if not r.compared:
            rows.append([r.optimizer, "-", r.note or "-", *["-"] * (len(header) - 3)])
            continue
        cells = [
            r.optimizer,
            fmt(r.best_lr, 3),
            final_cell(r),
            interval(r.cross_steps),
            pct(r.savings.get(f"cross_steps_vs_{b}")),
            interval(r.cross_seconds),
            pct(r.savings.get(f"cross_seconds_vs_{b}")),
        ]
        if fits:
            cells.append(pct(r.savings.get(f"fit_steps_vs_{b}")) if r.fit and r.fit.ok else "-")
        if no_completed_run(r):  # nothing to measure: the final-loss cell says why
            cells[3:] = ["-"] * (len(cells) - 3)
        rows.append(cells)
    return Table("headline", header, rows)


def no_completed_run(r: Row) -> bool:
    return bool(r.failed) and len(r.failed) >= (r.final_eval_loss.n if r.final_eval_loss else 0)


def headline_full(c: Comparison) -> Table:
    """Every measure, each vs the baseline and vs Shampoo ('*': intervals do not overlap)."""
    b = c.baseline
    header = ["optimizer", "best lr", "final loss", "seeds"]
    for m in (
        "iterations (crossing)",
        "wall-clock s (crossing)",
        "iterations (fit)",
        "wall-clock s (fit)",
    ):
        header += [m, f"vs {b}", "vs shampoo"]
    rows = []
    for r in c.rows:
        if not r.compared:
            rows.append([r.optimizer, "-", r.note or "-", *["-"] * (len(header) - 3)])
            continue
        cells = [r.optimizer, fmt(r.best_lr, 3), interval(r.final_eval_loss)]
        cells.append(str(r.final_eval_loss.n if r.final_eval_loss else 0))
        for key, value in (
            ("cross_steps", interval(r.cross_steps)),
            ("cross_seconds", interval(r.cross_seconds)),
            ("fit_steps", fmt(r.fit_steps) if r.fit and r.fit.ok else "-"),
            ("fit_seconds", fmt(r.fit_seconds) if r.fit and r.fit.ok else "-"),
        ):
            cells += [
                value,
                pct(r.savings.get(f"{key}_vs_{b}")),
                pct(r.savings.get(f"{key}_vs_shampoo")),
            ]
        rows.append(cells)
    return Table("all measures", header, rows)


def cost(c: Comparison) -> Table:
    header = [
        "optimizer",
        "world size",
        "tokens/s",
        "s/step",
        "fwd+bwd s/step",
        "optimizer s/step",
        "optimizer state MB per rank",
        f"state vs {c.baseline}",
        "peak memory MB",
    ]
    rows = []
    for r in c.rows:
        if not r.compared:
            continue
        k = r.cost
        rows.append(
            [
                r.optimizer,
                fmt(k.get("world_size"), 3),
                fmt(k.get("tokens_per_second"), 4),
                fmt(k.get("seconds_per_step")),
                fmt(k.get("fwd_bwd_seconds_per_step")),
                fmt(k.get("optim_seconds_per_step")),
                _mb(k.get("optimizer_state_bytes")),
                fmt(k.get(f"state_ratio_vs_{c.baseline}"), 3),
                _mb(k.get("peak_memory_bytes")),
            ]
        )
    return Table("cost per step and memory", header, rows)


def fits(c: Comparison) -> Table:
    header = ["optimizer", "a", "b", "beta", "rmse", "weights", "residuals", "points (N, loss)"]
    rows = []
    for r in c.rows:
        f = r.fit
        if f is None:
            continue
        pts = ", ".join(f"({n:.0f}, {x:.3f})" for n, x in f.points)
        res = ", ".join(f"{x:+.4f}" for x in f.residuals) or "-"
        if f.ok:
            rows.append(
                [
                    r.optimizer,
                    f"{f.a:.4f}",
                    f"{f.b:.4g}",
                    f"{f.beta:.4f}",
                    f"{f.rmse:.4f}",
                    f.weighting,
                    res,
                    pts,
                ]
            )
        else:
            rows.append([r.optimizer, f.reason or "-", "", "", fmt(f.rmse), f.weighting, res, pts])
    return Table("power-law fits L(N) = a + b N^-beta", header, rows)


def sweep(c: Comparison) -> Table:
    header = ["optimizer", "lr", "fraction", "seed", "status", "steps", "final eval loss", "run"]
    rows = [
        [
            r.optimizer,
            f"{r.lr:g}",
            f"{r.fraction:g}",
            str(r.seed),
            r.status,
            str(r.steps),
            fmt(r.final_eval_loss if r.completed else None),
            Path(r.run_dir).name,
        ]
        for r in sorted(c.runs, key=lambda r: (r.optimizer, r.lr, r.fraction, r.seed))
    ]
    return Table("all runs (the sweep)", header, rows)


def verdicts(c: Comparison) -> list[str]:
    """One line per optimizer, the headline in words."""
    b = c.row(c.baseline)
    out = []
    if b is not None and b.compared and c.target is not None:
        if c.target_given:
            reached = (
                f"reached the given target {c.target:.4f} in {interval(b.cross_steps)} iterations"
                if b.cross_steps is not None and math.isfinite(b.cross_steps.mean)
                else f"did not reach the given target {c.target:.4f}"
            )
            out.append(
                f"{c.baseline} (baseline, lr {b.best_lr:g}) ended at {final_cell(b)}: {reached}"
            )
        else:
            out.append(
                f"{c.baseline} (baseline, lr {b.best_lr:g}) ended at {final_cell(b)}, its mean "
                f"final loss {c.target:.4f} is the target, reached at its last iteration "
                f"({interval(b.cross_steps)})"
            )
    for r in c.rows:
        if r.optimizer == c.baseline or not r.compared or c.target is None:
            continue
        out.append(_verdict(r, c))
    return out


def _words(s: Saving | None, more: str, less: str) -> str:
    if s is None or s.value is None:
        return "no comparison"
    if math.isinf(s.value):
        return "never"
    word = less if s.value >= 0 else more
    sig = {True: "significant", False: "not significant", None: "one seed: no interval"}[
        s.significant
    ]
    return f"{abs(100 * s.value):.0f}% {word} ({sig})"


def _verdict(r: Row, c: Comparison) -> str:
    b = c.baseline
    what = (
        f"the given target {c.target:.4f}" if c.target_given else f"{b}'s final loss {c.target:.4f}"
    )
    if no_completed_run(r):
        return f"{r.optimizer} (lr {r.best_lr:g}): no completed run ({final_cell(r)})"
    eff = _effective_data(r, c)
    if r.cross_steps is None or not math.isfinite(r.cross_steps.mean):
        seeds = seeds_reached(r.cross_steps.values if r.cross_steps else [])
        near = f": {seeds}" if seeds.reached else ""
        return (
            f"{r.optimizer} (lr {r.best_lr:g}) did not reach {what} in every seed{near}; final "
            f"loss {interval(r.final_eval_loss)}{eff}"
        )
    n = r.cross_steps.n
    return (
        f"{r.optimizer} (lr {r.best_lr:g}) reached {what} in "
        f"{interval(r.cross_steps)} iterations ({n} seed{'s' if n > 1 else ''}): "
        f"{_words(r.savings.get(f'cross_steps_vs_{b}'), 'more', 'fewer')}; wall-clock "
        f"{_words(r.savings.get(f'cross_seconds_vs_{b}'), 'more', 'less')}{eff}"
    )


def effective_data_of(c: Comparison, optimizer: str) -> EffectiveData | None:
    """``optimizer``'s effective-data speedup against the baseline's loss-vs-length fit, at
    its mean final loss over seeds (scripts/report/scale.py); None without a baseline fit or
    a final loss."""
    base, row = c.row(c.baseline), c.row(optimizer)
    runs = c.best_runs(optimizer)
    if base is None or base.fit is None or row is None or not runs or row.final_eval_loss is None:
        return None
    done = [x for x in row.final_eval_loss.values if math.isfinite(x)]
    if not done:
        return None
    pts = base.fit.points
    return effective_data(
        [n for n, _ in pts], [x for _, x in pts], sum(done) / len(done), runs[0].steps
    )


def _effective_data(r: Row, c: Comparison) -> str:
    """``; effective-data speedup 1.3x``, or why there is none."""
    ed = effective_data_of(c, r.optimizer)
    if ed is None:
        return ""
    if ed.ratio is None:
        return f"; effective-data speedup not valid ({ed.reason.split(':')[0]})"
    return f"; effective-data speedup {ed.ratio:.2f}x ({c.baseline} would need {ed.ratio:.2f}x the tokens)"
