"""The report's figures, described once (:class:`Figure`) and drawn two ways: PNG with
matplotlib (report.md, README) and interactive plotly (the dashboard: hover values, zoom,
click a legend entry to hide an optimizer)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scripts.report.analysis import Comparison
from scripts.report.fit import power_law

COLORS = {"adamw": "#1f77b4", "soap": "#d62728", "shampoo": "#2ca02c", "muon": "#9467bd",
          # the rest of `make lineup`'s members (tab10), so nine lines stay apart
          "kron": "#ff7f0e", "schedulefree": "#8c564b", "lion": "#e377c2", "adafactor": "#bcbd22",
          "ademamix": "#17becf"}  # fmt: skip


def color(optimizer: str) -> str:
    return COLORS.get(optimizer.split("-")[0], "#7f7f7f")


# (matplotlib, plotly) names of the same line dash and marker
LINES = [("-", "solid"), ("--", "dash"), (":", "dot"), ("-.", "dashdot")]
MARKERS = [("o", "circle"), ("s", "square"), ("^", "triangle-up"), ("D", "diamond")]


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]
    color: str
    mode: str = "lines+markers"  # lines+markers | markers | lines
    group: str = ""  # legend group: one click toggles an optimizer's every series
    faint: bool = False
    style: int = 0  # line dash and marker (LINES, MARKERS): tells apart one colour's series
    show_legend: bool = True
    band: tuple[list[float], list[float]] | None = None  # (low, high) per x: a seed interval


@dataclass
class Figure:
    key: str  # file stem
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    xlog: bool = False
    hlines: list[tuple[float, str]] = field(default_factory=list)
    ylim: tuple[float, float] | None = None  # None: matplotlib's and plotly's own


def figures(c: Comparison) -> list[Figure]:
    out = []
    for key, xkey, xlabel in (
        ("loss_vs_iterations", "step", "iteration"),
        ("loss_vs_wallclock", "train_seconds", "training wall-clock (s)"),
    ):
        f = Figure(key, f"Eval loss vs {xlabel} (best LR, every seed)", xlabel, "eval loss")
        for r in c.rows:
            for i, run in enumerate(c.best_runs(r.optimizer)):
                h = run.eval_history
                if h:
                    f.series.append(
                        Series(
                            f"{r.optimizer} (lr {r.best_lr:g})"
                            if i == 0
                            else f"{r.optimizer} seed {run.seed}",
                            [getattr(e, xkey) for e in h],
                            [e.eval_loss for e in h],
                            color(r.optimizer),
                            group=r.optimizer,
                            faint=i > 0,
                            show_legend=i == 0,
                        )
                    )
        if c.target is not None:
            f.hlines.append((c.target, f"target {c.target:.3f}"))
        f.ylim = loss_range(f)
        out.append(f)
    f = Figure(
        "lr_sweep",
        "Learning-rate sweep",
        "learning rate",
        "final eval loss (full length)",
        xlog=True,
    )
    for opt, pts in c.sweep.items():
        xs = list(pts)
        f.series.append(
            Series(
                opt,
                xs,
                [pts[x] if math.isfinite(pts[x]) else math.nan for x in xs],
                color(opt),
                group=opt,
            )
        )
    out.append(f)
    f = Figure(
        "fits",
        "Final loss vs run length, L(N) = a + b N^-beta",
        "run length N (iterations)",
        "final eval loss",
    )
    for r in c.rows:
        if r.fit is None or not r.fit.points:
            continue
        ns = [p[0] for p in r.fit.points]
        f.series.append(
            Series(
                f"{r.optimizer} runs",
                ns,
                [p[1] for p in r.fit.points],
                color(r.optimizer),
                "markers",
                r.optimizer,
            )
        )
        if r.fit.ok:
            grid = np.linspace(min(ns) * 0.8, max(ns) * 1.3, 60)
            f.series.append(
                Series(
                    f"{r.optimizer} fit (a={r.fit.a:.2f}, beta={r.fit.beta:.2f})",
                    grid.tolist(),
                    power_law(grid, r.fit.a, r.fit.b, r.fit.beta).tolist(),
                    color(r.optimizer),
                    "lines",
                    r.optimizer,
                )
            )
    if c.target is not None:
        f.hlines.append((c.target, "target"))
    out.append(f)
    freq = [
        r
        for r in c.runs
        if r.optimizer in ("soap", "shampoo") and r.fraction == 1.0 and r.completed
    ]
    if len({r.precondition_frequency for r in freq}) > 1:
        f = Figure(
            "frequency_ablation",
            "Preconditioning-frequency ablation",
            "precondition frequency",
            "final eval loss",
            xlog=True,
        )
        for opt in ("soap", "shampoo"):
            pts: dict[int, list[float]] = {}
            for r in freq:
                if r.optimizer == opt:
                    pts.setdefault(r.precondition_frequency, []).append(r.final_eval_loss)
            if pts:
                xs = sorted(pts)
                f.series.append(Series(opt, xs, [min(pts[x]) for x in xs], color(opt), group=opt))
        b = c.row(c.baseline)
        if b is not None and b.final_eval_loss is not None:
            f.hlines.append((b.final_eval_loss.mean, c.baseline))
        out.append(f)
    return out


def profile_figure(key: str, title: str, grid: dict[str, dict[str, float]]) -> Figure:
    """An AlgoPerf-style performance profile (:func:`scripts.report.scale.performance_profile`)
    of ``grid[experiment][optimizer]`` (iterations or seconds to the target) as a figure."""
    from scripts.report.scale import performance_profile

    f = Figure(key, title, "tau (x the best)", "fraction of experiments")
    for opt, pts in performance_profile(grid).items():
        xs, ys = zip(*pts, strict=True)
        f.series.append(Series(opt, list(xs), list(ys), color(opt), group=opt))
    return f


def loss_range(f: Figure) -> tuple[float, float] | None:
    """Up to the highest first evaluation of a curve: a run that spiked far above where every
    run started (AdEMAMix in the lineup: 32 nats) would otherwise flatten every other curve;
    its climb still shows, leaving the top of the plot."""
    firsts = [s.y[0] for s in f.series if s.y and math.isfinite(s.y[0])]
    ys = [y for s in f.series for y in s.y if math.isfinite(y)]
    if not firsts or not ys or max(ys) <= max(firsts):
        return None
    lo = min(ys + [y for y, _ in f.hlines])
    hi = max(firsts)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def to_png(fig: Figure, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, ax = plt.subplots(figsize=(6.4, 4.2))
    for s in fig.series:
        k = s.style % len(LINES)
        ax.plot(
            s.x,
            s.y,
            linestyle="none" if s.mode == "markers" else LINES[k][0],
            marker=None if s.mode == "lines" else MARKERS[k][0],
            ms=3,
            color=s.color,
            alpha=0.45 if s.faint else 1.0,
            label=s.name if s.show_legend else None,
        )
        if s.band is not None:
            ax.fill_between(s.x, s.band[0], s.band[1], color=s.color, alpha=0.18, lw=0)
    for y, label in fig.hlines:
        ax.axhline(y, ls="--", color="k", lw=1, label=label)
    if fig.xlog:
        ax.set_xscale("log")
    if fig.ylim is not None:
        ax.set_ylim(*fig.ylim)
    ax.set_xlabel(fig.xlabel)
    ax.set_ylabel(fig.ylabel)
    ax.set_title(fig.title, fontsize=10)
    if fig.series or fig.hlines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    f.tight_layout()
    f.savefig(path, dpi=110)
    plt.close(f)
    return path


def _rgba(color: str, alpha: float) -> str:
    """``#rrggbb`` as a translucent ``rgba(...)`` (a trace's opacity does not reach its fill)."""
    if not (color.startswith("#") and len(color) == 7):
        return color
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def to_plotly_div(fig: Figure, div_id: str) -> str:
    """An interactive figure as an HTML ``<div>`` (the page includes plotly.js once)."""
    import plotly.graph_objects as go

    f = go.Figure()
    for s in fig.series:
        if s.band is not None:  # the interval as a filled area between its two edges
            f.add_trace(go.Scatter(x=s.x, y=s.band[1], mode="lines", line={"width": 0},
                                   legendgroup=s.group or s.name, showlegend=False,
                                   hoverinfo="skip"))  # fmt: skip
            f.add_trace(go.Scatter(x=s.x, y=s.band[0], mode="lines", line={"width": 0},
                                   fill="tonexty", fillcolor=_rgba(s.color, 0.2),
                                   legendgroup=s.group or s.name, showlegend=False,
                                   hoverinfo="skip"))  # fmt: skip
        f.add_trace(
            go.Scatter(
                x=s.x,
                y=s.y,
                name=s.name,
                mode=s.mode,
                line={"color": s.color, "dash": LINES[s.style % len(LINES)][1]},
                marker={"size": 6, "symbol": MARKERS[s.style % len(MARKERS)][1]},
                opacity=0.45 if s.faint else 1.0,
                legendgroup=s.group or s.name,
                showlegend=s.show_legend,
                hovertemplate=f"{s.name}<br>{fig.xlabel}: %{{x:.4g}}<br>{fig.ylabel}: %{{y:.4f}}<extra></extra>",
            )
        )
    for y, label in fig.hlines:
        f.add_hline(y=y, line_dash="dash", line_color="black", annotation_text=label)
    f.update_layout(
        title=fig.title.replace("\n", "<br>"),
        xaxis_title=fig.xlabel,
        yaxis_title=fig.ylabel,
        xaxis_type="log" if fig.xlog else "linear",
        yaxis_range=list(fig.ylim) if fig.ylim else None,
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return f.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)
