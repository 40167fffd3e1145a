"""Iterations and wall-clock to a target loss, across optimizers: tables, plots, dashboard.

``python -m scripts.report <runs-dir> [--target LOSS] [--baseline adamw] [--out DIR] [--wandb]``

Two measures, both reported (terms as in ``scripts/clock.py``):

1. Crossing: the first iteration / training second at which a run's eval loss <= target,
   linearly interpolated between evaluations, read from its eval history.
2. The paper's method (Vyas et al. 2024, Sec. 6): the final losses of runs at several schedule
   fractions are fitted with ``L(N) = a + b * N^(-beta)``; the iterations needed are the ``N``
   where the fit reaches the target, and the wall-clock needed is that ``N`` times the
   optimizer's measured training seconds per step.

Each optimizer is compared at its best learning rate (lowest mean final eval loss at full
length). The default target is the baseline's (AdamW's) final eval loss at full length, as in
the paper. Runs that crashed, diverged or never reached the target count as "not reached"
(infinite), never dropped.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

INF = float("inf")
BETA_MIN, BETA_MAX = 1e-3, 5.0


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def _label(cfg: dict[str, Any], summary: dict[str, Any]) -> str:
    name = summary.get("optimizer") or cfg.get("optimizer_name") or "unknown"
    opt = cfg.get("optimizer", {}) or {}
    if name == "soap":
        if opt.get("one_sided"):
            name += "-one-sided"
        if opt.get("factorized"):
            name += "-factorized"
    return name


def load_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every run directory below ``runs_dir`` (one with a config.yaml or summary.json)."""
    import yaml

    runs = []
    root = Path(runs_dir)
    dirs = sorted(
        {p.parent for p in root.rglob("config.yaml")}
        | {p.parent for p in root.rglob("summary.json")}
    )
    for d in dirs:
        if "report" in d.relative_to(root).parts or ".sweeps" in d.parts:
            continue
        cfg = (
            yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").exists() else {}
        )
        summary = (
            json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        )
        status = summary.get("status", "crashed")
        train = cfg.get("train", {}) or {}
        regime = cfg.get("regime", {}) or {}
        row = {
            "run_dir": str(d),
            "optimizer": _label(cfg, summary),
            "lr": float(summary.get("lr", (cfg.get("optimizer") or {}).get("lr", float("nan")))),
            "model": summary.get("model", (cfg.get("model") or {}).get("preset")),
            "regime": summary.get("regime", regime.get("name")),
            "fraction": float(summary.get("fraction", train.get("fraction", 1.0))),
            "seed": int(summary.get("seed", cfg.get("seed", 0))),
            "precondition_frequency": summary.get(
                "precondition_frequency", regime.get("precondition_frequency")
            ),
            "status": status,
            "steps": summary.get("steps"),
            "final_eval_loss": summary.get("final_eval_loss") if status == "completed" else None,
            "seconds_per_step": summary.get("seconds_per_step"),
            "fwd_bwd_seconds_per_step": summary.get("fwd_bwd_seconds_per_step"),
            "optim_seconds_per_step": summary.get("optim_seconds_per_step"),
            "tokens_per_second": summary.get("tokens_per_second"),
            "optimizer_state_bytes": summary.get("optimizer_state_bytes"),
            "peak_memory_bytes": summary.get("peak_memory_bytes"),
            "train_seconds": summary.get("train_seconds"),
            "eval_history": summary.get("eval_history") or _eval_from_metrics(d),
        }
        runs.append(row)
    return runs


def _eval_from_metrics(d: Path) -> list[dict[str, float]]:
    p = d / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for ln in p.read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            if "eval_loss" in r:
                out.append(
                    {
                        "step": r["step"],
                        "eval_loss": r["eval_loss"],
                        "train_seconds": r.get("train_seconds", float("nan")),
                    }
                )
    return out


# --------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------
def crossing(history: list[dict[str, float]], target: float) -> tuple[float, float]:
    """(iteration, seconds) at which eval loss first reaches ``target``, interpolated linearly
    between the two evaluations around the crossing; ``(inf, inf)`` if never."""
    prev = None
    for h in history:
        loss = h["eval_loss"]
        if loss is not None and math.isfinite(loss) and loss <= target:
            if prev is None or prev["eval_loss"] <= loss:
                return float(h["step"]), float(h["train_seconds"])
            f = (prev["eval_loss"] - target) / (prev["eval_loss"] - loss)
            return (
                prev["step"] + f * (h["step"] - prev["step"]),
                prev["train_seconds"] + f * (h["train_seconds"] - prev["train_seconds"]),
            )
        if loss is not None and math.isfinite(loss):
            prev = h
    return INF, INF


def power_law(n: np.ndarray, a: float, b: float, beta: float) -> np.ndarray:
    return a + b * np.power(n, -beta)


def fit_power_law(steps: list[float], losses: list[float]) -> dict[str, Any]:
    """Least-squares fit of ``L(N) = a + b N^-beta``; needs at least 3 distinct N."""
    pts = sorted(
        {
            (float(n), float(x))
            for n, x in zip(steps, losses, strict=True)
            if x is not None and math.isfinite(x)
        }
    )
    if len({n for n, _ in pts}) < 3:
        return {
            "ok": False,
            "reason": f"too few points for a fit ({len(pts)} run lengths; need 3)",
            "points": pts,
        }
    from scipy.optimize import curve_fit

    n = np.array([p[0] for p in pts])
    loss = np.array([p[1] for p in pts])
    p0 = (max(0.0, loss.min() - 0.5), (loss.max() - loss.min() + 0.5) * n.min() ** 0.5, 0.5)
    # A cross-entropy asymptote is >= 0; beta in [BETA_MIN, BETA_MAX].
    lower, upper = [0.0, 0.0, BETA_MIN], [np.inf, np.inf, BETA_MAX]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's covariance warning for exact fits
            (a, b, beta), _ = curve_fit(
                power_law, n, loss, p0=p0, bounds=(lower, upper), maxfev=20000
            )
    except (RuntimeError, ValueError) as e:
        return {"ok": False, "reason": f"fit failed: {e}", "points": pts}
    # A fit pinned at a bound does not describe the data (e.g. losses that fall faster at
    # longer runs, which no power law does): report it, never its extrapolation.
    at_bound = [
        name
        for name, v, lo, hi in (("a", a, 0.0, None), ("beta", beta, BETA_MIN, BETA_MAX))
        if abs(v - lo) <= 1e-6 * max(1.0, abs(lo)) or (hi is not None and abs(v - hi) <= 1e-6 * hi)
    ]
    if at_bound:
        return {
            "ok": False,
            "reason": f"unreliable fit ({', '.join(at_bound)} at its bound: the losses do not follow a + b N^-beta)",
            "points": pts,
            "a": float(a),
            "b": float(b),
            "beta": float(beta),
        }
    resid = loss - power_law(n, a, b, beta)
    return {
        "ok": True,
        "a": float(a),
        "b": float(b),
        "beta": float(beta),
        "residuals": resid.tolist(),
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "points": pts,
    }


def steps_for(fit: dict[str, Any], target: float) -> float:
    """N with ``a + b N^-beta = target`` (inf when the asymptote is above the target)."""
    if not fit.get("ok") or target <= fit["a"]:
        return INF
    return float((fit["b"] / (target - fit["a"])) ** (1.0 / fit["beta"]))


def _saving(x: float, base: float) -> float | None:
    if not (math.isfinite(base) and base > 0):
        return None
    if not math.isfinite(x):
        return -INF
    return 1.0 - x / base


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------
def analyse(
    runs: list[dict[str, Any]], target: float | None, baseline: str = "adamw"
) -> dict[str, Any]:
    """Best LR per optimizer, target, crossing and fit measures, savings."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["regime"]), []).append(r)
    if len(groups) > 1:
        # One comparison per (model, regime); the caller reports each.
        return {
            "multi": {f"{m}/{g}": analyse(rs, target, baseline) for (m, g), rs in groups.items()}
        }
    optimizers = sorted({r["optimizer"] for r in runs})
    best: dict[str, dict[str, Any]] = {}
    for opt in optimizers:
        full = [
            r
            for r in runs
            if r["optimizer"] == opt and r["fraction"] == 1.0 and _is_main_freq(r, runs)
        ]
        by_lr: dict[float, list[float]] = {}
        for r in full:
            by_lr.setdefault(r["lr"], []).append(
                r["final_eval_loss"] if r["final_eval_loss"] is not None else INF
            )
        if not by_lr:
            continue
        lr, losses = min(by_lr.items(), key=lambda kv: (float(np.mean(kv[1])), kv[0]))
        best[opt] = {
            "lr": lr,
            "final_eval_loss": float(np.mean(losses)),
            "sweep": {k: float(np.mean(v)) for k, v in sorted(by_lr.items())},
        }
    notes = []
    if target is None:
        if baseline in best and math.isfinite(best[baseline]["final_eval_loss"]):
            target = best[baseline]["final_eval_loss"]
        else:
            notes.append(f"baseline {baseline!r} has no completed full-length run: pass --target")
    rows = []
    for opt in optimizers:
        if opt not in best:
            rows.append({"optimizer": opt, "note": "no full-length run"})
            continue
        lr = best[opt]["lr"]
        mine = [
            r for r in runs if r["optimizer"] == opt and r["lr"] == lr and _is_main_freq(r, runs)
        ]
        full = [r for r in mine if r["fraction"] == 1.0]
        sps = [r["seconds_per_step"] for r in mine if r["seconds_per_step"]]
        sec_per_step = float(np.mean(sps)) if sps else float("nan")
        row: dict[str, Any] = {
            "optimizer": opt,
            "best_lr": lr,
            "final_eval_loss": best[opt]["final_eval_loss"],
            "seconds_per_step": sec_per_step,
        }
        if target is not None:
            cross = [
                crossing(r["eval_history"], target) if r["status"] == "completed" else (INF, INF)
                for r in full
            ]
            its = [c[0] for c in cross]
            secs = [c[1] for c in cross]
            row["cross_steps"] = float(np.mean(its))
            row["cross_seconds"] = float(np.mean(secs))
            # Sample standard deviation across seeds (runs of the best LR at full length).
            row["cross_steps_std"] = (
                float(np.std(its, ddof=1))
                if len(its) > 1 and all(map(math.isfinite, its))
                else None
            )
            row["n_seeds"] = len(its)
            fit = fit_power_law(
                [r["steps"] for r in mine if r["status"] == "completed"],
                [r["final_eval_loss"] for r in mine if r["status"] == "completed"],
            )
            row["fit"] = fit
            row["fit_steps"] = steps_for(fit, target) if fit["ok"] else None
            row["fit_seconds"] = (
                row["fit_steps"] * sec_per_step if row["fit_steps"] is not None else None
            )
        for k in (
            "fwd_bwd_seconds_per_step",
            "optim_seconds_per_step",
            "tokens_per_second",
            "optimizer_state_bytes",
            "peak_memory_bytes",
        ):
            vals = [r[k] for r in mine if r.get(k) is not None]
            row[k] = float(np.mean(vals)) if vals else None
        rows.append(row)
    by = {r["optimizer"]: r for r in rows}
    for r in rows:
        for ref in (baseline, "shampoo"):
            b = by.get(ref)
            if b is None or ref == r["optimizer"] or "cross_steps" not in r:
                continue
            for m in ("cross_steps", "cross_seconds", "fit_steps", "fit_seconds"):
                if r.get(m) is not None and b.get(m) is not None:
                    r[f"{m}_saved_vs_{ref}"] = _saving(r[m], b[m])
            if r.get("optimizer_state_bytes") and b.get("optimizer_state_bytes"):
                r[f"state_ratio_vs_{ref}"] = r["optimizer_state_bytes"] / b["optimizer_state_bytes"]
    return {
        "target": target,
        "baseline": baseline,
        "rows": rows,
        "best": best,
        "notes": notes,
        "runs": runs,
    }


def _is_main_freq(r: dict[str, Any], runs: list[dict[str, Any]]) -> bool:
    """Frequency-ablation runs (non-default frequency) are kept out of the headline."""
    freqs = [
        x["precondition_frequency"]
        for x in runs
        if x["optimizer"] == r["optimizer"] and x["precondition_frequency"] is not None
    ]
    if not freqs or r["precondition_frequency"] is None:
        return True
    common = max(set(freqs), key=freqs.count)
    return r["precondition_frequency"] == common


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def _fmt(x: Any, pct: bool = False, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "not reached" if x > 0 else "never (baseline reached)"
    if pct:
        return f"{100 * x:+.1f}%"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def headline_table(a: dict[str, Any]) -> str:
    """Both measures, iterations and wall-clock, each vs the baseline and vs Shampoo."""
    b = a["baseline"]
    cols = ["optimizer", "best lr", "final loss"]
    for measure in (
        "iterations (crossing)",
        "wall-clock s (crossing)",
        "iterations (fit)",
        "wall-clock s (fit)",
    ):
        cols += [measure, f"vs {b}", "vs shampoo"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in a["rows"]:
        if "best_lr" not in r:
            lines.append(
                f"| {r['optimizer']} | - | - | {r.get('note', '')} |" + " |" * (len(cols) - 4)
            )
            continue
        fit = r.get("fit", {})
        cells = [r["optimizer"], _fmt(r["best_lr"], digits=3), _fmt(r["final_eval_loss"])]
        for key in ("cross_steps", "cross_seconds", "fit_steps", "fit_seconds"):
            if key.startswith("fit") and not fit.get("ok"):
                cells += [fit.get("reason", "-") if key == "fit_steps" else "-", "-", "-"]
                continue
            value = _fmt(r.get(key), digits=4)
            if key == "cross_steps" and r.get("cross_steps_std") is not None:
                value += f" ± {r['cross_steps_std']:.3g} ({r['n_seeds']} seeds)"
            cells += [
                value,
                _fmt(r.get(f"{key}_saved_vs_{b}"), pct=True),
                _fmt(r.get(f"{key}_saved_vs_shampoo"), pct=True),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mb(v: float | None) -> str:
    return f"{v / 2**20:.1f}" if v else "-"


def cost_table(a: dict[str, Any]) -> str:
    lines = [
        "| optimizer | tokens/s | s/step | fwd+bwd s/step | optimizer s/step | optimizer state MB | state vs adamw | peak memory MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        if "best_lr" not in r:
            continue
        lines.append(
            f"| {r['optimizer']} | {_fmt(r.get('tokens_per_second'), digits=4)} | {_fmt(r.get('seconds_per_step'))} | {_fmt(r.get('fwd_bwd_seconds_per_step'))} | "
            f"{_fmt(r.get('optim_seconds_per_step'))} | {_mb(r.get('optimizer_state_bytes'))} | {_fmt(r.get('state_ratio_vs_adamw'), digits=3)} | {_mb(r.get('peak_memory_bytes'))} |"
        )
    return "\n".join(lines)


def sweep_table(a: dict[str, Any]) -> str:
    lines = [
        "| optimizer | lr | fraction | seed | status | steps | final eval loss | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(a["runs"], key=lambda r: (r["optimizer"], r["lr"], r["fraction"], r["seed"])):
        lines.append(
            f"| {r['optimizer']} | {r['lr']:g} | {r['fraction']:g} | {r['seed']} | {r['status']} | {r['steps']} | {_fmt(r['final_eval_loss'])} | `{Path(r['run_dir']).name}` |"
        )
    return "\n".join(lines)


def fit_table(a: dict[str, Any]) -> str:
    lines = [
        "| optimizer | a | b | beta | rmse | residuals | points (N, loss) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        f = r.get("fit")
        if not f:
            continue
        pts = ", ".join(f"({n:.0f}, {x:.3f})" for n, x in f["points"])
        if f["ok"]:
            res = ", ".join(f"{x:+.4f}" for x in f["residuals"])
            lines.append(
                f"| {r['optimizer']} | {f['a']:.4f} | {f['b']:.4g} | {f['beta']:.4f} | {f['rmse']:.4f} | {res} | {pts} |"
            )
        else:
            lines.append(f"| {r['optimizer']} | {f['reason']} | | | | | {pts} |")
    return "\n".join(lines)


COLORS = {"adamw": "#1f77b4", "soap": "#d62728", "shampoo": "#2ca02c", "muon": "#9467bd"}


def make_plots(a: dict[str, Any], out: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: list[tuple[str, Path]] = []
    rows = [r for r in a["rows"] if "best_lr" in r]
    best_runs = {
        r["optimizer"]: [
            x
            for x in a["runs"]
            if x["optimizer"] == r["optimizer"]
            and x["lr"] == r["best_lr"]
            and x["fraction"] == 1.0
            and _is_main_freq(x, a["runs"])
        ]
        for r in rows
    }

    for xkey, xlabel, fname in (
        ("step", "iteration", "loss_vs_iterations.png"),
        ("train_seconds", "training wall-clock (s)", "loss_vs_wallclock.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for opt, rs in best_runs.items():
            for i, r in enumerate(rs):
                h = r["eval_history"]
                if h:
                    ax.plot(
                        [p[xkey] for p in h],
                        [p["eval_loss"] for p in h],
                        "-o",
                        ms=3,
                        color=COLORS.get(opt.split("-")[0]),
                        alpha=1 if i == 0 else 0.5,
                        label=f"{opt} (lr {r['lr']:g})" if i == 0 else None,
                    )
        if a["target"] is not None:
            ax.axhline(a["target"], ls="--", color="k", lw=1, label=f"target {a['target']:.3f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval loss")
        ax.set_title(f"Eval loss vs {xlabel} (best LR each)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        plots.append((f"Eval loss vs {xlabel}", out / fname))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for opt in sorted({r["optimizer"] for r in a["runs"]}):
        pts = a["best"].get(opt, {}).get("sweep", {})
        if pts:
            xs = list(pts)
            ys = [pts[x] if math.isfinite(pts[x]) else np.nan for x in xs]
            ax.plot(xs, ys, "-o", color=COLORS.get(opt.split("-")[0]), label=opt)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final eval loss (full length)")
    ax.set_title("Learning-rate sweep")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "lr_sweep.png", dpi=110)
    plt.close(fig)
    plots.append(("Learning-rate sweep", out / "lr_sweep.png"))

    fits = [r for r in rows if r.get("fit")]
    if fits:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r in fits:
            f = r["fit"]
            c = COLORS.get(r["optimizer"].split("-")[0])
            ns = [p[0] for p in f["points"]]
            ax.plot(ns, [p[1] for p in f["points"]], "o", color=c, label=f"{r['optimizer']} runs")
            if f["ok"]:
                grid = np.linspace(min(ns) * 0.8, max(ns) * 1.3, 100)
                ax.plot(
                    grid,
                    power_law(grid, f["a"], f["b"], f["beta"]),
                    "-",
                    color=c,
                    label=f"fit a={f['a']:.2f} beta={f['beta']:.2f}",
                )
        if a["target"] is not None:
            ax.axhline(a["target"], ls="--", color="k", lw=1, label="target")
        ax.set_xlabel("run length N (iterations)")
        ax.set_ylabel("final eval loss")
        ax.set_title("L(N) = a + b N^-beta fits")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "fits.png", dpi=110)
        plt.close(fig)
        plots.append(("Final loss vs run length with power-law fits", out / "fits.png"))

    freq_runs = [
        r
        for r in a["runs"]
        if r["optimizer"] in ("soap", "shampoo")
        and r["fraction"] == 1.0
        and r["final_eval_loss"] is not None
    ]
    if len({r["precondition_frequency"] for r in freq_runs}) > 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for opt in ("soap", "shampoo"):
            pts: dict[int, list[float]] = {}
            for r in freq_runs:
                if r["optimizer"] == opt:
                    pts.setdefault(r["precondition_frequency"], []).append(r["final_eval_loss"])
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [min(pts[x]) for x in xs], "-o", color=COLORS[opt], label=opt)
        if "adamw" in a["best"]:
            ax.axhline(
                a["best"]["adamw"]["final_eval_loss"], ls="--", color=COLORS["adamw"], label="adamw"
            )
        ax.set_xscale("log")
        ax.set_xlabel("precondition frequency")
        ax.set_ylabel("final eval loss")
        ax.set_title("Preconditioning-frequency ablation")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "frequency_ablation.png", dpi=110)
        plt.close(fig)
        plots.append(("Preconditioning-frequency ablation", out / "frequency_ablation.png"))
    return plots


def _md_to_html_table(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.strip()]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = [
        "<table>",
        "<thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>",
    ]
    for ln in lines[2:]:
        cells = [c.strip().strip("`") for c in ln.strip("|").split("|")]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def write_dashboard(
    out: Path,
    title: str,
    command: str,
    tables: list[tuple[str, str]],
    plots: list[tuple[str, Path]],
    notes: list[str],
) -> Path:
    """A self-contained page (inline CSS, base64 images, no network): works from file://."""
    d = out / "dashboard"
    d.mkdir(parents=True, exist_ok=True)
    imgs = "\n".join(
        f'<figure class="plot"><img alt="{html.escape(t)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, p in plots
    )
    tbls = "\n".join(
        f'<section><h2>{html.escape(t)}</h2><div class="table" id="table-{i}">{_md_to_html_table(md)}</div></section>'
        for i, (t, md) in enumerate(tables)
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}} th,td{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}
th{{background:#f3f3f3}} td:first-child,th:first-child{{text-align:left}}
.plots{{display:flex;flex-wrap:wrap;gap:1rem}} figure{{margin:0}} img{{max-width:560px;border:1px solid #eee}}
code{{background:#f6f6f6;padding:.1rem .3rem}}
</style></head>
<body data-rendered="pending">
<h1>{html.escape(title)}</h1>
<p>Produced by <code>{html.escape(command)}</code>.</p>
<ul>{note_html}</ul>
{tbls}
<section><h2>Plots</h2><div class="plots">{imgs}</div></section>
<script>
window.addEventListener('load', function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  var rows = document.querySelectorAll('table tbody tr').length;
  document.body.setAttribute('data-rendered', (ok === imgs.length && rows > 0) ? 'ok' : 'broken');
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-rows', String(rows));
}});
</script>
</body></html>
"""
    path = d / "index.html"
    path.write_text(page)
    return path


def provenance(runs: list[dict[str, Any]]) -> str:
    """Hardware, date, git SHA and library versions, read from the runs' env.json."""
    infos = []
    for r in runs:
        p = Path(r["run_dir"]) / "env.json"
        if p.exists():
            infos.append((p.stat().st_mtime, json.loads(p.read_text())))
    if not infos:
        return "Provenance: no env.json in the run directories."
    import datetime as dt

    first, last = min(t for t, _ in infos), max(t for t, _ in infos)
    info = infos[-1][1]
    hw = info.get("hardware", {})
    gpus = ", ".join(hw.get("gpus", [])) or "no GPU"
    shas = sorted({i.get("git_sha") or "?" for _, i in infos})
    v = info.get("versions", {})
    day = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
    return (
        f"Runs from {day(first)} to {day(last)} on {hw.get('cpu_model', hw.get('machine', '?'))} "
        f"({hw.get('cpu_count')} CPUs, {hw.get('memory_gib', '?')} GiB), {gpus}; git {', '.join(shas)}; "
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, python {v.get('python')}."
    )


def write_report(
    runs_dir: str | Path,
    out: str | Path | None = None,
    target: float | None = None,
    baseline: str = "adamw",
    command: str | None = None,
    wandb_upload: bool = False,
) -> dict[str, Any]:
    import pandas as pd

    runs = load_runs(runs_dir)
    if not runs:
        raise SystemExit(
            f"error: no run directories under {runs_dir}: run scripts.train first or check the path"
        )
    out = Path(out) if out else Path(runs_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    command = command or "python -m scripts.report " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    a = analyse(runs, target, baseline)
    analyses = a["multi"] if "multi" in a else {f"{runs[0]['model']}/{runs[0]['regime']}": a}
    md = [
        f"# Optimizer comparison: {runs_dir}",
        "",
        f"Produced by `{command}`.",
        "",
        provenance(runs),
        "",
    ]
    md += [
        "Terms: an iteration is one optimizer step; wall-clock is training time only (device synchronised, eval/checkpoint/warm-up excluded); the target is an eval loss (default: the baseline's final eval loss at full length, its best LR). Savings are 1 - mine/baseline; 'not reached' counts as infinite.",
        "",
    ]
    tables, plots, notes = [], [], []
    for name, an in analyses.items():
        sub = out if len(analyses) == 1 else out / name.replace("/", "_")
        sub.mkdir(parents=True, exist_ok=True)
        tgt = an["target"]
        md += [
            f"## {name}",
            "",
            f"Target eval loss: {tgt:.4f}" if tgt is not None else "Target: none",
            "",
        ]
        md += [f"- {n}" for n in an["notes"]]
        md += [
            "### Headline (each optimizer at its best learning rate)",
            "",
            headline_table(an),
            "",
        ]
        md += ["### Cost per step and memory", "", cost_table(an), ""]
        md += ["### Power-law fits L(N) = a + b N^-beta", "", fit_table(an), ""]
        md += ["### All runs (the sweep)", "", sweep_table(an), ""]
        ps = make_plots(an, sub)
        md += [f"![{t}]({p.relative_to(out)})" for t, p in ps] + [""]
        tables += [
            (f"{name}: headline", headline_table(an)),
            (f"{name}: cost and memory", cost_table(an)),
            (f"{name}: fits", fit_table(an)),
            (f"{name}: all runs", sweep_table(an)),
        ]
        plots += [(f"{name}: {t}", p) for t, p in ps]
        notes += [
            f"{name}: target eval loss {tgt:.4f}" if tgt is not None else f"{name}: no target"
        ] + an["notes"]
    (out / "report.md").write_text("\n".join(md))
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "eval_history"} for r in runs])
    df.to_csv(out / "summary.csv", index=False)
    dash = write_dashboard(out, f"soap-bench report: {runs_dir}", command, tables, plots, notes)
    if wandb_upload:
        _upload_wandb(out, df, plots)
    return {
        "analysis": analyses,
        "out": out,
        "dashboard": dash,
        "headline": {k: headline_table(v) for k, v in analyses.items()},
    }


def _upload_wandb(out: Path, df: Any, plots: list[tuple[str, Path]]) -> None:
    import wandb

    run = wandb.init(
        project="soap-bench", job_type="report", name=f"report-{out.parent.name}", dir=str(out)
    )
    run.log(
        {
            "summary": wandb.Table(dataframe=df.astype(str)),
            **{t: wandb.Image(str(p)) for t, p in plots},
        }
    )
    run.finish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dir")
    ap.add_argument(
        "--target",
        type=float,
        default=None,
        help="target eval loss (default: the baseline's final loss)",
    )
    ap.add_argument("--baseline", default="adamw")
    ap.add_argument("--out", default=None, help="output directory (default: <runs_dir>/report)")
    ap.add_argument(
        "--wandb",
        action="store_true",
        help="upload the table and plots to wandb (WANDB_MODE applies)",
    )
    args = ap.parse_args(argv)
    if not Path(args.runs_dir).is_dir():
        print(f"error: {args.runs_dir} is not a directory of runs", file=sys.stderr)
        return 2
    res = write_report(args.runs_dir, args.out, args.target, args.baseline, wandb_upload=args.wandb)
    for name, t in res["headline"].items():
        print(f"\n{name}\n{t}")
    print(f"\nreport: {res['out'] / 'report.md'}\ndashboard: {res['dashboard']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
