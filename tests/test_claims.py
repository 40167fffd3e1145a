"""The paper's claims scorecard (issue 29) from synthetic studies with known answers."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from scripts.experiments import reproduce, study
from scripts.report import claims
from scripts.report import study as study_report
from scripts.report.claim_measures import Evidence
from tests.test_report import make_run

STEPS = list(range(0, 401, 20))


def _runs(root, opt, b, seeds=(0, 1, 2), freq=80, sps=1.0, offsets=None, lr=0.01):
    """Full-length runs whose eval loss is 2 + b / sqrt(step + 10) (+ a per-seed offset);
    the same seed's offset for every optimizer (paired seeds), unless ``offsets`` are given."""
    for s in seeds:
        off = offsets[s] if offsets else 0.002 * (s - 1)
        hist = [{"step": t, "eval_loss": 2 + b / math.sqrt(t + 10) + off,
                 "train_seconds": t * sps} for t in STEPS]  # fmt: skip
        d = make_run(root, opt, lr, 1.0, hist, seed=s, freq=freq)
        summary = json.loads((d / "summary.json").read_text())
        summary |= {"train_seconds": STEPS[-1] * sps, "params_total": 1000,
                    "optimizer_state_bytes": {"adamw": 8000}.get(opt, 12000)}  # fmt: skip
        (d / "summary.json").write_text(json.dumps(summary))


def synthetic_study(root):
    """Known answers (AdamW b=20 reaches 2 + 20/20.25 at step 400):
    - large batch: SOAP b=12 needs ~138 steps: 65% fewer (> 40%: reproduced);
    - small batch: SOAP b=16 saves ~37% vs AdamW; Shampoo b=18 needs ~322 steps, so SOAP saves
      iterations against it, but at twice the seconds per step loses wall-clock (contradicted);
    - frequencies: SOAP 15 / 15.5 / 16 at 1 / 32 / 80, Shampoo 15.1 / 17 / 18: both beat AdamW,
      close at 1, Shampoo degrades faster;
    - variants: one-sided's gap to SOAP is +0.03, -0.02, 0 over seeds (inconclusive), far
      from Shampoo (contradicted); factorized +0.01 (reproduced); both together never ran."""
    exps = [
        {"name": "small", "role": "small_batch"},
        {"name": "large", "role": "large_batch"},
        {"name": "f1", "role": "frequency", "reference": "small"},
        {"name": "f32", "role": "frequency", "reference": "small"},
        {"name": "one", "role": "variant", "reference": "small"},
        {"name": "fac", "role": "variant", "reference": "small"},
        {"name": "both", "role": "variant", "reference": "small"},  # listed, never ran
    ]
    (root / "study.json").write_text(json.dumps({"study": "synthetic", "experiments": exps}))
    for opt, b, sps in (("adamw", 20, 1.0), ("soap", 16, 2.0), ("shampoo", 18, 1.0)):
        _runs(root / "small", opt, b, sps=sps)
    for opt, b in (("adamw", 20), ("soap", 12), ("shampoo", 16)):
        _runs(root / "large", opt, b, freq=10)
    for name, freq, soap, shampoo in (("f1", 1, 15.0, 15.1), ("f32", 32, 15.5, 17.0)):
        _runs(root / name, "soap", soap, freq=freq)
        _runs(root / name, "shampoo", shampoo, freq=freq)
    base = {s: 0.002 * (s - 1) for s in range(3)}
    gaps = [0.03, -0.02, 0.0]
    _runs(root / "one", "soap-one-sided", 16, offsets={s: base[s] + gaps[s] for s in range(3)})
    _runs(root / "fac", "soap-factorized", 16 + 0.01 * 20.25)


def test_every_verdict_from_a_synthetic_study(tmp_path):
    synthetic_study(tmp_path)
    verdicts, table, ablations = claims.scorecard(tmp_path)
    got = {v.claim.id: v for v in verdicts}
    assert len(got) == len(claims.load_claims()) == 17  # one scope each here
    want = {
        "large_iterations_vs_adamw": "reproduced",
        "large_iterations_vs_shampoo": "reproduced",
        "small_iterations_vs_adamw": "reproduced",
        "small_iterations_vs_shampoo": "reproduced",
        "small_wall_clock_vs_adamw": "contradicted",  # -26%: 2 s per step
        "small_wall_clock_vs_shampoo": "contradicted",
        "gain_larger_at_large_batch": "reproduced",
        "frequency_beats_adamw": "reproduced",
        "frequency_close_at_1": "reproduced",
        "frequency_soap_degrades_slower": "reproduced",
        "one_sided_worse_than_soap": "inconclusive",
        "one_sided_on_par_with_shampoo": "contradicted",
        "factorized_loses_little": "reproduced",
        "both_variants_beat_adamw": "not run",
        "both_variants_less_memory": "not run",
    }
    assert {k: got[k].verdict for k in want} == want
    # The numbers behind them, by hand: AdamW's target 2 + 20/sqrt(410) (+ the seed's offset).
    target = 20 / math.sqrt(410)
    soap_large = (12 / target) ** 2 - 10  # where 12 / sqrt(t + 10) reaches it
    large = got["large_iterations_vs_adamw"].evidence
    assert large.values == pytest.approx([1 - soap_large / 400] * 3, abs=2e-3)
    gap = got["one_sided_worse_than_soap"].evidence
    assert gap.values == pytest.approx([0.03, -0.02, 0.0]) and gap.n == 3
    assert "33% of its measured step time" in got["small_wall_clock_vs_adamw"].note  # 0.4 of 1.2 s
    close = got["frequency_close_at_1"]
    assert close.threshold == pytest.approx(0.25 * 4 / math.sqrt(410))  # of SOAP's gain
    assert got["both_variants_beat_adamw"].evidence.missing == "no soap-one-sided-factorized runs"
    md = table.markdown()
    assert "| Large batch (2M tokens): SOAP needs over 40% fewer iterations than AdamW |" in md
    assert "CONTRADICTED" in md and "not run" in md
    assert "| f1 | soap | 1 |" in ablations.markdown()
    assert claims.tally(verdicts) == (
        "11 reproduced, 3 contradicted, 1 inconclusive, 2 not run (of 17 verdicts)"
    )


def test_the_study_report_opens_with_the_scorecard(tmp_path):
    synthetic_study(tmp_path)
    out = study_report.write(tmp_path)
    md = (out / "report.md").read_text()
    assert md.index("## The paper's claims") < md.index("## One row per experiment")
    assert "| f1 |" not in md.split("## One row per experiment")[1]  # ablations: scorecard only
    card = json.loads((out / "scorecard.json").read_text())
    assert {c["verdict"] for c in card} == {"reproduced", "contradicted", "inconclusive", "not run"}
    page = (out / "dashboard" / "index.html").read_text()
    assert "The paper&#x27;s claims" in page and "CONTRADICTED" in page


@pytest.mark.parametrize(
    ("values", "side", "t", "verdict"),
    [
        ([0.5, 0.6], "above", 0.4, "reproduced"),
        ([0.1, 0.2], "above", 0.4, "contradicted"),
        ([0.3, 0.5], "above", 0.4, "inconclusive"),
        ([0.9], "above", 0.4, "inconclusive"),  # one seed
        ([0.5, -math.inf], "above", 0.0, "inconclusive"),  # a seed that never reached
        ([-math.inf, -math.inf], "above", 0.0, "contradicted"),
        ([0.01, -0.01], "within", 0.05, "reproduced"),
        ([0.2, 0.21], "within", 0.05, "contradicted"),
        ([0.1, 0.12], "below", 0.05, "contradicted"),
    ],
)
def test_the_verdict_rule(values, side, t, verdict):
    assert claims.decide(Evidence(values), side, t) == verdict


def test_a_deterministic_measure_needs_one_value():
    assert claims.decide(Evidence([0.8], deterministic=True), "below", 1.0) == "reproduced"
    assert claims.decide(Evidence(missing="no runs"), "below", 1.0) == "not run"


def test_the_claims_plan_counts_its_runs_within_the_time_budget(capsys):
    """make claims' study: 2 batches x 3 optimizers x (3 LRs + 2 seeds + 2 fractions), 3
    frequencies x 2 optimizers x 3 seeds, 3 variants x 3 seeds; under 45 minutes estimated."""
    argv = ["--study", "claims", "--plan", "--jobs", "2", "--optimizers", "adamw", "shampoo",
            "soap", "--lrs", "0.00316", "0.01", "0.0316", "--fractions", "0.5", "0.75",
            "--best-seeds", "1", "2"]  # fmt: skip
    assert reproduce.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("study claims: 8 experiments, 69 runs")
    assert 2 * 3 * 7 + 3 * 2 * 3 + 3 * 3 == 69
    minutes = float(last.split(", ~")[-1].split(" min")[0])
    assert 5 < minutes <= 45


def test_ablations_run_at_their_references_best_lr(tmp_path, capsys):
    """A study's ablation: ``--lr-from`` its reference and no fractions; with no reference
    runs, reproduce refuses in one line."""
    synthetic_study(tmp_path)
    args = argparse.Namespace(
        lr_from=str(tmp_path / "large"), optimizers=["soap", "shampoo"], dry_run=False,
        lrs=[1e-3],
    )  # fmt: skip
    assert study.lrs_from(args) == {"soap": 0.01, "shampoo": 0.01}
    args.lr_from = str(tmp_path / "nothing")
    with pytest.raises(SystemExit, match="no completed soap run there"):
        study.lrs_from(args)
    assert reproduce.main(["--study", "claims", "--dry-run", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    freq1 = next(ln for ln in out.splitlines() if "--out " + str(tmp_path / "c" / "freq1") in ln)
    assert "--optimizers soap shampoo --lr-from" in freq1 and "--fractions --" in freq1
    assert "regime.precondition_frequency=1" in freq1
