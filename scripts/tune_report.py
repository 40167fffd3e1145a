"""The tuning report: ``python -m scripts.tune_report <tune.out>`` (after ``scripts.tune``).

From ``tune.json`` (the trials of every optimizer, with their run directories), it writes
``tune.md`` and ``sensitivity.png``:

* per optimizer: the tuned hyperparameters, trials, diverged or crashed trials and compute;
* the saving against AdamW with **LR-only** tuning (the best trial that differs from the
  start configuration in the learning rate alone: what the LR sweeps of the demo and
  ``scripts.reproduce`` do) and with **full** tuning (the coordinate-descent incumbent), side
  by side: iterations to AdamW's final loss at the same tuning level, from each run's eval
  history (:func:`scripts.measures.crossing`), one seed each;
* the sensitivity of the final loss to each axis around the optimum (the trials that differ
  from the incumbent in that axis alone).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from scripts.measures import crossing
from scripts.record import RunRecord


def cd_root() -> Path:
    return Path(__file__).resolve().parent.parent


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
            if t["seed"] == 0 and all(v == best[k] for k, v in t["config"].items() if k != axis)
        ]
        out[axis] = sorted(pts)
    return out


def _steps_to(run_dir: str | None, target: float) -> float | None:
    rec = RunRecord.read(run_dir) if run_dir else None
    if rec is None or not rec.completed:
        return None
    return crossing([vars(e) for e in rec.eval_history], target)[0]


def savings(res: dict[str, Any], starts: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per optimizer and tuning level: final loss, iterations to AdamW's final loss, saving."""
    opts = res["optimizers"]
    if "adamw" not in opts:
        return []
    rows = []
    for level in ("LR only", "full"):
        picks = {
            o: (
                lr_only_best(r, starts[o])
                if level == "LR only"
                else _row(r["trials_table"], r["best"])
            )
            for o, r in opts.items()
        }
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


def plot(sens: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = sorted({a for s in sens.values() for a in s})
    fig, axs = plt.subplots(1, len(axes_names), figsize=(3.2 * len(axes_names), 3), squeeze=False)
    colors = {opt: f"C{i}" for i, opt in enumerate(sens)}  # one colour per optimizer throughout
    for ax, name in zip(axs[0], axes_names, strict=True):
        for opt, s in sens.items():
            pts = [(x, y) for x, y in s.get(name, []) if math.isfinite(y)]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=colors[opt], label=opt)
        if name in ("lr", "eps", "epsilon", "adamw_lr"):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("final eval loss")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", label=o) for o, c in colors.items()]
    fig.legend(handles=handles, loc="upper right")
    fig.suptitle("sensitivity around the tuned optimum (other axes at their tuned values)")
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not (Path(argv[0]) / "tune.json").exists():
        print("error: give the tuner's tune.out directory (with tune.json)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    res = json.loads((out / "tune.json").read_text())
    from scripts import coordinate as cd

    path = Path(res["space"])
    space = cd.load_space(path if path.is_absolute() else cd_root() / path, list(res["optimizers"]))
    starts = {o: {a.name: a.start for a in axes} for o, axes in space.axes.items()}
    sens = {o: sensitivity(r) for o, r in res["optimizers"].items()}
    plot(sens, out / "sensitivity.png")
    lines = [
        f"# Tuning report: `{out}`",
        "",
        f"Space: `{res['space']}`, budget {res['budget']} trials per optimizer.",
        "",
    ]
    lines += ["| optimizer | tuned | final loss | trials | diverged or crashed | compute s | threshold | moves |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o, r in res["optimizers"].items():
        tuned = ", ".join(f"{k}={v:g}" for k, v in r["best"].items())
        lines.append(
            f"| {o} | {tuned} | {r['loss']:.4f} | {r['trials']} | {r['diverged']} | "
            f"{r['compute_seconds']:.0f} | {r['threshold']:.4f} | {'; '.join(r['moves']) or 'none'} |"
        )
    rows = savings(res, starts)
    lines += ["", "Iterations to AdamW's final loss at the same tuning level (one seed each):", "",
              "| tuning | optimizer | configuration | final loss | iterations to target | vs AdamW |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for x in rows:
        cfg = ", ".join(f"{k}={v:g}" for k, v in x["config"].items())
        steps = (
            "not reached"
            if x["steps"] is None or not math.isfinite(x["steps"])
            else f"{x['steps']:.1f}"
        )
        sav = (
            "-"
            if x["optimizer"] == "adamw"
            else ("-" if x["saving"] is None else f"{100 * x['saving']:+.1f}% fewer")
        )
        lines.append(
            f"| {x['level']} | {x['optimizer']} | {cfg} | {x['loss']:.4f} | {steps} | {sav} |"
        )
    lines += [
        "",
        "Sensitivity (final loss at each value, the other axes at their tuned values):",
        "",
    ]
    for o, s in sens.items():
        for axis, pts in s.items():
            shown = ", ".join(f"{v:g}: {loss:.4f}" for v, loss in pts)
            lines.append(f"- {o} `{axis}`: {shown}")
    lines += ["", "![sensitivity](sensitivity.png)", ""]
    (out / "tune.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
