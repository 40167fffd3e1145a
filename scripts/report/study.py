"""The study report: several experiments side by side (issue 19).

``python -m scripts.report.study <study dir>`` (``scripts.reproduce --study`` runs it): every
subdirectory with runs is one experiment, analysed as ``scripts.report`` analyses it
(:func:`scripts.report.analysis.analyse`, the baseline's own final loss as the target).
Writes ``<study dir>/report/``:

* ``report.md`` and a dashboard page: one row per experiment and optimizer with the model
  size, tokens per step, tokens per parameter, and each measure against the baseline: the
  crossing saving in iterations and wall-clock (mean over seeds, significance as in the
  experiment's report), how many seeds reached the target, the paper's fit saving, and the
  effective-data speedup (:mod:`scripts.report.scale`); each experiment's own report linked;
* PNGs and interactive plots: the iteration saving against model size and against tokens
  per step (one line per optimizer), and AlgoPerf-style performance profiles over the
  study's experiments, in iterations and in wall-clock (tau from 1 to 4).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.cli import wants_help
from scripts.report import claims, plots, tables
from scripts.report.analysis import Interval, analyse
from scripts.report.load import load_runs
from scripts.report.page import write_dashboard
from scripts.report.plots import Figure, Series, color
from scripts.report.scale import seeds_reached
from scripts.report.tables import Table


@dataclass
class StudyRow:
    experiment: str
    optimizer: str
    params: int | None  # non-embedding
    tokens_per_step: int | None
    tokens_per_param: float | None
    iterations: float  # mean iterations to the target (inf: not reached)
    seconds: float
    iter_saving: float | None
    wall_saving: float | None
    significant: bool | None
    seeds: str
    fit_saving: float | None
    d_eff: float | None
    d_eff_reason: str | None
    iter_band: tuple[float, float] | None = None  # iterations saved, mean -+ std over seeds
    passes: float | None = None  # over the training data, full length
    output_share: float | None = None  # output layer / non-embedding parameters


def experiments(study: Path) -> list[tuple[str, Path]]:
    """``(name, directory)`` of every subdirectory holding runs (not the study's report), less
    the ablations (``reference`` in ``study.json``: they have no baseline of their own; the
    claims scorecard reads them)."""
    ablations = set()
    if (study / "study.json").exists():
        spec = json.loads((study / "study.json").read_text())
        ablations = {e["name"] for e in spec["experiments"] if e.get("reference")}
    return [
        (d.name, d)
        for d in sorted(p for p in study.iterdir() if p.is_dir() and p.name != "report")
        if d.name not in ablations and (any(d.rglob("summary.json")) or any(d.rglob("config.yaml")))
    ]


def rows(study: Path, baseline: str = "adamw") -> list[StudyRow]:
    out = []
    for name, d in experiments(study):
        for c in analyse(load_runs(d), None, baseline).comparisons:
            label = name if len({r.regime for r in c.runs}) == 1 else f"{name} {c.name}"
            for r in c.rows:
                if not r.compared:
                    continue
                runs = c.best_runs(r.optimizer)
                rec = runs[0].record if runs else None
                params = rec.params_non_embedding if rec else None
                per_step = rec.tokens_per_step if rec else None
                full = rec.full_length_steps or rec.steps if rec else 0
                s_it = r.savings.get(f"cross_steps_vs_{baseline}")
                s_wall = r.savings.get(f"cross_seconds_vs_{baseline}")
                s_fit = r.savings.get(f"fit_steps_vs_{baseline}")
                ed = tables.effective_data_of(c, r.optimizer)
                base = c.row(baseline)
                ratio, why = (
                    (1.0, None)
                    if r.optimizer == baseline
                    else (None, "no baseline fit or final loss")
                    if ed is None
                    else (ed.ratio, ed.reason)
                )
                out.append(StudyRow(
                    label, r.optimizer, params, per_step,
                    full * per_step / params if params and per_step else None,
                    r.cross_steps.mean if r.cross_steps else math.inf,
                    r.cross_seconds.mean if r.cross_seconds else math.inf,
                    s_it.value if s_it else None, s_wall.value if s_wall else None,
                    s_it.significant if s_it else None,
                    str(seeds_reached(r.cross_steps.values if r.cross_steps else [])),
                    s_fit.value if s_fit else None, ratio, why,
                    saving_band(r.cross_steps, base.cross_steps if base else None),
                    full * per_step / rec.train_data_tokens
                    if rec and rec.train_data_tokens and per_step else None,
                    (rec.params_total - params) / 2 / params
                    if rec and rec.params_total and params else None,
                ))  # fmt: skip
    return out


def saving_band(mine: Interval | None, base: Interval | None) -> tuple[float, float] | None:
    """The iterations saved over seeds, ``mean -+ std`` of ``1 - c_i / mean(baseline)``
    (None: fewer than 2 seeds, or a seed or the baseline that never reached the target)."""
    if mine is None or base is None or mine.n < 2 or not math.isfinite(base.mean):
        return None
    if not all(math.isfinite(v) for v in mine.values) or base.mean <= 0:
        return None
    per_seed = [1.0 - v / base.mean for v in mine.values]
    m, sd = statistics.fmean(per_seed), statistics.stdev(per_seed)
    return m - sd, m + sd


def _other(attr: str, v: float) -> str:
    if not v:
        return "?"
    return f"{v / 1e6:.2g}M params" if attr == "params" else f"{int(v):,} tokens/step"


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return "never" if math.isinf(x) else f"{100 * x:+.1f}%"


def table(rs: list[StudyRow]) -> Table:
    sig = {True: " *", False: "", None: ""}
    return Table(
        "One row per experiment and optimizer (savings against the baseline; * significant)",
        ["experiment", "optimizer", "non-embedding params", "tokens/step", "tokens/param",
         "passes", "output layer", "iterations saved", "wall-clock saved", "seeds reached", "fit saving",
         "effective-data speedup"],
        [[r.experiment, r.optimizer, tables.fmt(r.params / 1e6, 3) + "M" if r.params else "-",
          f"{r.tokens_per_step:,}" if r.tokens_per_step else "-",
          tables.fmt(r.tokens_per_param, 3), tables.fmt(r.passes, 2),
          f"{r.output_share:.0%}" if r.output_share is not None else "-",
          _pct(r.iter_saving) + sig[r.significant],
          _pct(r.wall_saving), r.seeds, _pct(r.fit_saving),
          f"{r.d_eff:.2f}x" if r.d_eff is not None else f"not valid ({(r.d_eff_reason or '').split(':')[0]})"]
         for r in rs],
    )  # fmt: skip


def figures(rs: list[StudyRow], baseline: str) -> list[Figure]:
    figs = []
    for key, attr, other, label in (
        ("saving_vs_model_size", "params", "tokens_per_step", "non-embedding parameters"),
        ("saving_vs_batch", "tokens_per_step", "params", "tokens per step"),
    ):
        f = Figure(key, f"Iterations saved against {baseline} vs {label}\n(bands: seeds, mean "
                   "-+ std; a missing point: not reached)", label,
                   f"iterations saved vs {baseline} (%)", xlog=True)  # fmt: skip
        for opt in sorted({r.optimizer for r in rs} - {baseline}):
            # One line per optimizer and value of the other axis (batch on the size plot,
            # size on the batch plot), so a line changes one thing at a time.
            mine = [r for r in rs if r.optimizer == opt and getattr(r, attr) and
                    r.iter_saving is not None and math.isfinite(r.iter_saving)]  # fmt: skip
            for i, o in enumerate(sorted({getattr(r, other) or 0 for r in mine})):
                pts = sorted((r for r in mine if (getattr(r, other) or 0) == o),
                             key=lambda r: getattr(r, attr))  # fmt: skip
                xs = [getattr(r, attr) for r in pts]
                bands = [r.iter_band for r in pts]
                band = (
                    ([100 * b[0] for b in bands], [100 * b[1] for b in bands])  # type: ignore[index]
                    if all(b is not None for b in bands)
                    else None
                )
                name = f"{opt}, {_other(other, o)}"
                f.series.append(Series(name, xs, [100 * r.iter_saving for r in pts], color(opt),
                                       group=opt, style=i, band=band))  # fmt: skip
        figs.append(f)
    for key, attr, what in (("profile_iterations", "iterations", "iterations"),
                            ("profile_wallclock", "seconds", "wall-clock")):  # fmt: skip
        grid: dict[str, dict[str, float]] = {}
        for r in rs:
            grid.setdefault(r.experiment, {})[r.optimizer] = getattr(r, attr)
        figs.append(plots.profile_figure(key, f"Performance profile ({what} to the target)", grid))
    return figs


def write(study: Path, baseline: str = "adamw") -> Path:
    rs = rows(study, baseline)
    if not rs:
        raise SystemExit(f"error: no experiment with runs under {study}: run the study first")
    out = study / "report"
    out.mkdir(parents=True, exist_ok=True)
    t = table(rs)
    figs = figures(rs, baseline)
    links = [(n, f"../{n}/report/dashboard/index.html") for n, _ in experiments(study)]
    md = [f"# Study: {study}", "", "Produced by `python -m scripts.report.study "
          f"{study}`. Target per experiment: {baseline}'s own final loss.", ""]  # fmt: skip
    sections = []
    card = claims.scorecard(study)
    if card is not None:  # the paper's claims first: what a reader came for
        verdicts, ct, abl = card
        md += [f"## {ct.title}: {claims.tally(verdicts)}", "", ct.markdown(), "",
               claims.RULE, "", f"## {abl.title}", "", abl.markdown(), ""]  # fmt: skip
        (out / "scorecard.json").write_text(json.dumps(claims.to_json(verdicts), indent=1) + "\n")
        sections.append(("The paper's claims", [claims.tally(verdicts), claims.RULE], [ct, abl], [], []))  # fmt: skip
    md += [f"## {t.title}", "", t.markdown(), ""]
    for f in figs:
        png = plots.to_png(f, out / f"{f.key}.png")
        md.append(f"![{f.title.splitlines()[0]}]({png.name})")
    md += ["", "Experiments: " + ", ".join(f"[{n}](../{n}/report/report.md)" for n, _ in links)]
    (out / "report.md").write_text("\n".join(md) + "\n")
    divs = [plots.to_plotly_div(f, f"study-{f.key}") for f in figs]
    write_dashboard(out, f"soap-bench study: {study}", f"python -m scripts.report.study {study}",
                    f"{len(links)} experiments",
                    [*sections, ("Study", [], [t], [], divs)], links=links)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(list(argv), __doc__):
        return 0
    if not argv or not Path(argv[0]).is_dir():
        print("error: give a study directory (scripts.reproduce --study's --out)", file=sys.stderr)
        return 2
    out = write(Path(argv[0]))
    print((out / "report.md").read_text())
    print(f"dashboard: {out / 'dashboard' / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
