"""Studies (issue 19): several experiments planned and reported side by side."""

from __future__ import annotations

import json
import math

import pytest

from scripts.experiments import reproduce, study
from scripts.report import study as study_report
from tests.test_report import power_law_runs


def test_paper_study_plan_equals_its_presets_plans(capsys):
    """The four comparisons as their presets plan them; the ablations (issue 29) as
    reproduce plans them at one LR (their reference's best), the study's seeds, no fractions."""
    assert reproduce.main(["--study", "paper", "--plan"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("study paper: 10 experiments, 93 runs, ~2.05e+03 H100-hours")
    want = []
    for e in study.load("paper"):
        opts = (
            ["--optimizers", *e.optimizers, "--lrs", "0.00316", "--fractions"]
            if e.reference
            else []
        )
        assert reproduce.main([e.preset, "--plan", *opts, "--", *e.overrides]) == 0
        want.append(f"[{e.name}] " + capsys.readouterr().out.strip())
    assert "\n".join(lines[:-1]) == "\n".join(want)
    assert [e.role for e in study.load("paper")][:4] == ["small_batch", "large_batch"] * 2
    assert "20 tokens per non-embedding parameter" in want[0] and "output layer 12%" in want[0]


def test_a_study_mixing_tokens_per_parameter_says_so_unless_allowed(tmp_path, monkeypatch, capsys):
    """Size confounded with run length (the old cpu_ladder: fixed steps at every size) is one
    line and exit 2; ``--allow-mixed-tokens-per-param`` lets it run."""
    (tmp_path / "mixed.yaml").write_text(
        "experiments:\n"
        "  - {name: a, preset: ladder, overrides: [model=ladder12k]}\n"
        "  - {name: b, preset: ladder, overrides: [model=ladder12k, train.tokens_per_param=5]}\n"
    )
    real = study.STUDIES
    monkeypatch.setattr(study, "STUDIES", tmp_path)
    assert reproduce.main(["--study", "mixed", "--plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: study mixed: its experiments differ in tokens per")
    assert "(a: 20.1, b: 4.98)" in err[-1] and "--allow-mixed-tokens-per-param" in err[-1]
    assert reproduce.main(["--study", "mixed", "--plan", "--allow-mixed-tokens-per-param"]) == 0
    monkeypatch.setattr(study, "STUDIES", real)
    assert reproduce.main(["--study", "cpu_ladder", "--plan"]) == 0  # held at 20


def test_bad_studies_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="unknown study 'nope': choose one of"):
        study.load("nope")
    monkeypatch.setattr(study, "STUDIES", tmp_path)
    (tmp_path / "bad.yaml").write_text("experiments:\n  - {name: a, preset: no_such_preset}\n")
    with pytest.raises(SystemExit, match="experiment 'a': unknown preset 'no_such_preset'"):
        study.load("bad")
    (tmp_path / "twice.yaml").write_text(
        "experiments:\n  - {name: a, preset: demo}\n  - {name: a, preset: demo}\n"
    )
    with pytest.raises(SystemExit, match="two experiments are named 'a'"):
        study.load("twice")


def _sized(root, params: int, per_step: int) -> None:
    """Give every run under ``root`` a model size and tokens per step (as the trainer does)."""
    for s in root.rglob("summary.json"):
        d = json.loads(s.read_text())
        d |= {"params_non_embedding": params, "tokens_per_step": per_step,
              "full_length_steps": 2000}  # fmt: skip
        s.write_text(json.dumps(d))


def test_study_table_plots_profiles_and_dashboard_from_tiny_runs(tmp_path):
    """Two experiments from the report tests' exact power laws: in the second, SOAP is worse
    (a penalty on its losses), so it is not reached there and the profile says so."""
    small, large = tmp_path / "small", tmp_path / "large"
    power_law_runs(small)
    power_law_runs(large)
    _sized(small, 1_000_000, 4096)
    _sized(large, 4_000_000, 16384)
    for s in (large / "soap").rglob("summary.json"):  # SOAP ends above AdamW's final loss
        d = json.loads(s.read_text())
        d["eval_history"] = [{**e, "eval_loss": e["eval_loss"] + 1.0} for e in d["eval_history"]]
        d["final_eval_loss"] += 1.0
        s.write_text(json.dumps(d))
    rows = {(r.experiment, r.optimizer): r for r in study_report.rows(tmp_path)}
    assert set(rows) == {(e, o) for e in ("small", "large") for o in ("adamw", "soap", "shampoo")}
    s = rows[("small", "soap")]
    assert s.params == 1_000_000 and s.tokens_per_step == 4096
    assert s.tokens_per_param == pytest.approx(2000 * 4096 / 1_000_000)
    assert 0 < s.iter_saving < 1 and s.d_eff is not None and s.d_eff > 1
    assert "1 of 1 seeds reached" in s.seeds
    assert math.isinf(rows[("large", "soap")].iterations)  # never reached there
    out = study_report.write(tmp_path)
    md = (out / "report.md").read_text()
    assert "| small | soap | 1M | 4,096 |" in md and "| large | soap | 4M | 16,384 |" in md
    for f in ("saving_vs_model_size", "saving_vs_batch", "profile_iterations", "profile_wallclock"):
        assert (out / f"{f}.png").stat().st_size > 1000
    page = (out / "dashboard" / "index.html").read_text()
    assert 'href="../small/report/dashboard/index.html"' in page
    assert page.count('class="plot"') == 4
    # The profile at tau=1: SOAP is the best on "small" and not reached on "large".
    fig = next(f for f in study_report.figures(study_report.rows(tmp_path), "adamw")
               if f.key == "profile_iterations")  # fmt: skip
    soap = next(x for x in fig.series if x.name == "soap")
    assert soap.y[0] == pytest.approx(0.5) and soap.y[-1] == pytest.approx(0.5)
