"""The tuning section of a report: what ``scripts.tune`` found and what it changes.

From a tuner's ``tune.json`` (the trials of every optimizer, with their run directories):

* per optimizer: the tuned hyperparameters, trials, diverged or crashed trials and compute;
* the saving against AdamW with **LR-only** tuning (the best trial that differs from the
  start configuration in the learning rate alone: what the LR sweeps of the demo and
  ``scripts.reproduce`` do) and with **full** tuning (the coordinate-descent incumbent), side
  by side: iterations to AdamW's final loss at the same tuning level, from each run's eval
  history (:func:`scripts.measures.crossing`), one seed each;
* the sensitivity of the final loss to each axis around the optimum (the trials that differ
  from the incumbent in that axis alone), as a table and a PNG.

Used by ``python -m scripts.tune_report`` (tune.md next to tune.json) and by
``scripts.report`` (report.md and the dashboard, when the runs directory holds a tuner's
output, as ``scripts.reproduce --tune full`` leaves it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scripts.measures import crossing
from scripts.record import RunRecord
from scripts.report.plots import Figure, Series, color, to_png
from scripts.report.tables import Table

ROOT = Path(__file__).resolve().parents[2]


def _row(trials: list[dict], config: dict[str, float]) -> dict | None:
    return next((t for t in trials if t["config"] == config and t["seed"] == 0), None)


def lr_only_best(r: dict[str, Any], start: dict[str, float]) -> dict | None:
    """The best seed-0 trial whose configuration is the start's except for ``lr``."""
    cands = [
        t
        for t in r["trials_table"]
        if t["seed"] == 0 and all(v == start[k] for k, v in t["config"].items() if k != "lr")
    ]
    return min(cands, key=lambda t: t["loss"], default=None)


def sensitivity(r: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Axis -> (value, final loss) of the trials that differ from the incumbent in it alone."""
    best = r["best"]
    out: dict[str, list[tuple[float, float]]] = {}
    for axis in best:
        pts = [
            (t["config"][axis], t["loss"])
            for t in r["trials_table"]
            if t["seed"] == 0
            and axis in t["config"]  # a trial from before the axis existed has no value for it
            and all(v == best[k] for k, v in t["config"].items() if k != axis)
        ]
        out[axis] = sorted(pts)
    return out


def _steps_to(run_dir: str | None, target: float) -> float | None:
    rec = RunRecord.read(run_dir) if run_dir else None
    if rec is None or not rec.completed:
        return None
    return crossing([vars(e) for e in rec.eval_history], target)[0]


LEVELS = ("LR only", "full")


def _picks(opts: dict[str, Any], starts: dict[str, dict[str, float]], level: str) -> dict:
    """Each optimizer's chosen trial at a tuning level (its row of the trials table)."""
    return {
        o: lr_only_best(r, starts[o]) if level == "LR only" else _row(r["trials_table"], r["best"])
        for o, r in opts.items()
    }


def missing_runs(res: dict[str, Any], starts: dict[str, dict[str, float]]) -> list[str]:
    """Run directories the iterations columns read and that are not here (a clean clone has
    ``tune.json`` but not the trials' runs)."""
    out = []
    for level in LEVELS:
        for t in _picks(res["optimizers"], starts, level).values():
            d = (t or {}).get("run_dir")
            if d and not Path(d).is_dir() and d not in out:
                out.append(d)
    return out


def savings(res: dict[str, Any], starts: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per optimizer and tuning level: final loss, iterations to AdamW's final loss, saving."""
    opts = res["optimizers"]
    if "adamw" not in opts:
        return []
    rows = []
    for level in LEVELS:
        picks = _picks(opts, starts, level)
        base = picks["adamw"]
        if base is None or not math.isfinite(base["loss"]):
            continue
        base_steps = _steps_to(base.get("run_dir"), base["loss"])
        for o, t in picks.items():
            if t is None:
                continue
            steps = _steps_to(t.get("run_dir"), base["loss"])
            saving = (
                1 - steps / base_steps
                if steps is not None and base_steps and math.isfinite(steps)
                else None
            )
            rows.append({"level": level, "optimizer": o, "config": t["config"], "loss": t["loss"],
                         "steps": steps, "saving": saving})  # fmt: skip
    return rows


def figures(res: dict[str, Any]) -> list[Figure]:
    """One figure per axis: final loss against the axis's values, one line per optimizer."""
    sens = {o: sensitivity(r) for o, r in res["optimizers"].items()}
    out = []
    for name in sorted({a for s in sens.values() for a in s}):
        f = Figure(
            f"sensitivity_{name}",
            f"Sensitivity to {name} (other axes at their tuned values)",
            name,
            "final eval loss",
            xlog=name in ("lr", "eps", "epsilon", "adamw_lr"),
        )
        for opt, s in sens.items():
            pts = [(x, y) for x, y in s.get(name, []) if math.isfinite(y)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                f.series.append(Series(opt, list(xs), list(ys), color(opt), group=opt))
        out.append(f)
    return out


def load(tune_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """``tune.json`` and each optimizer's start configuration (from its space file)."""
    from scripts import coordinate as cd

    res = json.loads((tune_dir / "tune.json").read_text())
    path = Path(res["space"])
    space = cd.load_space(path if path.is_absolute() else ROOT / path, list(res["optimizers"]))
    return res, {o: {a.name: a.start for a in axes} for o, axes in space.axes.items()}


def _cfg(config: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in config.items())


def tables(res: dict[str, Any], starts: dict[str, dict[str, float]]) -> list[Table]:
    """The tuned settings, the LR-only vs full savings, and the sensitivity, as tables."""
    tuned = Table(
        "Tuned hyperparameters (coordinate descent)",
        ["optimizer", "tuned", "final loss", "trials", "diverged or crashed", "compute s",
         "threshold", "moves"],
        [[o, _cfg(r["best"]), f"{r['loss']:.4f}", str(r["trials"]), str(r["diverged"]),
          f"{r['compute_seconds']:.0f}", f"{r['threshold']:.4f}", "; ".join(r["moves"]) or "none"]
         for o, r in res["optimizers"].items()],
    )  # fmt: skip
    rows = []
    for x in savings(res, starts):
        steps = x["steps"]
        shown = "not reached" if steps is None or not math.isfinite(steps) else f"{steps:.1f}"
        sav = (
            "-"
            if x["optimizer"] == "adamw" or x["saving"] is None
            else f"{100 * x['saving']:+.1f}% fewer"
        )
        rows.append([x["level"], x["optimizer"], _cfg(x["config"]), f"{x['loss']:.4f}", shown, sav])
    saved = Table(
        "Iterations to AdamW's final loss at the same tuning level (one seed each)",
        ["tuning", "optimizer", "configuration", "final loss", "iterations to target", "vs AdamW"],
        rows,
    )
    sens = Table(
        "Sensitivity: final loss at each value, the other axes at their tuned values",
        ["optimizer", "axis", "value: final loss"],
        [[o, axis, ", ".join(f"{v:g}: {loss:.4f}" for v, loss in pts)]
         for o, s in ((o, sensitivity(r)) for o, r in res["optimizers"].items())
         for axis, pts in s.items()],
    )  # fmt: skip
    return [tuned, saved, sens]


def section(
    tune_dir: Path, out: Path, base: Path | None = None
) -> tuple[list[str], list[Table], list[Figure]]:
    """Markdown lines, tables and figures for ``tune_dir``'s tuning; the figures are written
    to ``out`` as PNG, linked relative to ``base`` (default ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    res, starts = load(tune_dir)
    ts, figs = tables(res, starts), figures(res)
    md = [f"Space: `{res['space']}`, budget {res['budget']} trials per optimizer "
          f"(tuner output: `{tune_dir}`).", ""]  # fmt: skip
    for t in ts:
        md += [f"### {t.title}", "", t.markdown(), ""]
    for f in figs:
        png = to_png(f, out / f"{f.key}.png")
        md.append(f"![{f.title}]({png.relative_to(base or out)})")
    return [*md, ""], ts, figs
