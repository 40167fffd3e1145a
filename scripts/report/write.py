"""Runs directory -> report.md, summary.csv, PNG plots, the dashboard, and optionally wandb."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.report import leaderboard, plots, tables, tuning
from scripts.report.analysis import Analysis, analyse
from scripts.report.load import RunDir, load_runs
from scripts.report.page import write_dashboard


@dataclass
class Report:
    out: Path
    dashboard: Path
    analysis: Analysis
    headline: dict[str, str]  # group -> compact markdown table
    verdicts: dict[str, list[str]]


def provenance(runs: list[RunDir]) -> str:
    """Hardware, date, git SHA and library versions, read from the runs' env.json."""
    infos = [(r.mtime, r.env) for r in runs if r.env]
    if not infos:
        return "Provenance: no env.json in the run directories."
    first, last = min(t for t, _ in infos), max(t for t, _ in infos)
    info = max(infos, key=lambda x: x[0])[1]
    hw = info.get("hardware", {})
    gpus = ", ".join(hw.get("gpus", [])) or "no GPU"
    shas = sorted({i.get("git_sha") or "?" for _, i in infos})
    v = info.get("versions", {})

    def day(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    shared = max(int(i.get("hardware", {}).get("concurrent_runs", 1)) for _, i in infos)
    sharing = (
        f" Up to {shared} runs shared the machine at once ({hw.get('torch_threads')} thread(s) "
        "each): each run's wall-clock is its own, measured under that sharing."
        if shared > 1
        else ""
    )
    return (
        f"Runs from {day(first)} to {day(last)} on {hw.get('cpu_model', hw.get('machine', '?'))} "
        f"({hw.get('cpu_count')} CPUs, {hw.get('memory_gib', '?')} GiB), {gpus}; git "
        f"{', '.join(shas)}; torch {v.get('torch')}, transformers {v.get('transformers')}, "
        f"python {v.get('python')}.{sharing}"
    )


def write_report(
    runs_dir: str | Path,
    out: str | Path | None = None,
    target: float | None = None,
    baseline: str = "adamw",
    command: str | None = None,
    wandb_upload: bool = False,
) -> Report:
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
    analysis = analyse(runs, target, baseline)
    prov = provenance(runs)
    md = [f"# Optimizer comparison: {runs_dir}", "", f"Produced by `{command}`.", "", prov, ""]
    md += [
        "Terms: an iteration is one optimizer step; wall-clock is training time only (device "
        "synchronised, eval/checkpoint/warm-up excluded); the target is an eval loss (default: "
        "the baseline's mean final eval loss over its seeds at full length, at its best LR, which "
        "it reaches by definition at its last iteration; the best LR is chosen on the sweep's "
        "seed, so that every LR is compared like with like, or after a runoff on every seed of "
        "the LRs in it). Savings are "
        "1 - mine/baseline; intervals are mean ± sample standard deviation over seeds; * marks "
        "a significant saving (intervals do not overlap); 'not reached' counts as infinite.",
        "",
    ]
    sections, pngs = [], []
    headline, verdicts = {}, {}
    single = len(analysis.comparisons) == 1
    for c in analysis.comparisons:
        sub = out if single else out / c.name.replace("/", "_")
        sub.mkdir(parents=True, exist_ok=True)
        head = tables.headline(c)
        main = [head, tables.cost(c)]
        if leaderboard.wanted(c):  # more than the paper's three optimizers: rank them first
            main.insert(0, leaderboard.table(c))
        details = [tables.headline_full(c), tables.fits(c), tables.sweep(c)]
        headline[c.name] = head.markdown()
        verdicts[c.name] = tables.verdicts(c)
        md += [f"## {c.name}", ""]
        md += [f"Target eval loss: {c.target:.4f}" if c.target is not None else "Target: none", ""]
        md += [f"- {n}" for n in c.notes] + [f"- {v}" for v in verdicts[c.name]] + [""]
        for t in main + details:
            md += [f"### {t.title}", "", t.markdown(), ""]
        figs = plots.figures(c)
        for f in figs:
            png = plots.to_png(f, sub / f"{f.key}.png")
            md.append(f"![{f.title}]({png.relative_to(out)})")
            pngs.append((f"{c.name}: {f.title}", png))
        md.append("")
        divs = [plots.to_plotly_div(f, f"{c.name}-{f.key}".replace("/", "-")) for f in figs]
        sections.append(
            (c.name, [*verdicts[c.name], *(f"note: {n}" for n in c.notes)], main, details, divs)
        )
    if any(leaderboard.wanted(c) for c in analysis.comparisons):
        figs = leaderboard.profile(analysis.comparisons)
        md += ["## Performance profiles", ""]
        for f in figs:
            png = plots.to_png(f, out / f"{f.key}.png")
            md.append(f"![{f.title}]({png.relative_to(out)})")
            pngs.append((f.title, png))
        md.append("")
        divs = [plots.to_plotly_div(f, f"overall-{f.key}") for f in figs]
        sections.append(("Performance profiles", [], [], [], divs))
    for tdir in sorted(p.parent for p in Path(runs_dir).rglob("tune.json")):
        tmd, ttables, tfigs = tuning.section(tdir, out / "tuning", base=out)
        name = f"Tuning ({tdir.relative_to(runs_dir)})"
        md += [f"## {name}", "", *tmd]
        divs = [plots.to_plotly_div(f, f"tuning-{f.key}") for f in tfigs]
        sections.append((name, [], ttables[:2], ttables[2:], divs))
    (out / "report.md").write_text("\n".join(md))
    df = pd.DataFrame([{"run_dir": str(r.run_dir)} | _flat(r.record.to_dict()) for r in runs])
    df.to_csv(out / "summary.csv", index=False)
    dash = write_dashboard(out, f"soap-bench report: {runs_dir}", command, prov, sections)
    if wandb_upload:
        _upload_wandb(out, df, pngs)
    return Report(out, dash, analysis, headline, verdicts)


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "eval_history"}


def _upload_wandb(out: Path, df: Any, pngs: list[tuple[str, Path]]) -> None:
    import wandb

    run = wandb.init(
        project="soap-bench", job_type="report", name=f"report-{out.parent.name}", dir=str(out)
    )
    run.log(
        {
            "summary": wandb.Table(dataframe=df.astype(str)),
            **{t: wandb.Image(str(p)) for t, p in pngs},
        }
    )
    run.finish()
