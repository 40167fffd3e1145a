"""Measures across experiments (issue 19, part): effective-data speedup, seeds reached,
performance profiles, on synthetic answers known by hand."""

import math

import pytest

from scripts.report.scale import effective_data, performance_profile, seeds_reached


def _law(d, a=2.0, b=400.0, beta=0.5):
    return a + b * d ** (-beta)


def test_effective_data_is_exact_for_a_known_power_law():
    tokens = [1e6, 2e6, 4e6, 8e6]
    losses = [_law(d) for d in tokens]
    # A run that reached, at 4M tokens, the loss the baseline reaches at 6M: speedup 1.5.
    r = effective_data(tokens, losses, _law(6e6), 4e6)
    assert r.reason is None
    assert r.d_eff == pytest.approx(6e6, rel=1e-3) and r.ratio == pytest.approx(1.5, rel=1e-3)


def test_effective_data_says_why_it_is_not_valid():
    tokens = [1e6, 2e6, 4e6, 8e6]
    # Losses whose drop grows with length: no power law fits (a pinned at its bound).
    bad = effective_data(tokens, [6.0, 5.9, 5.6, 4.9], 5.0, 4e6)
    assert bad.ratio is None and "bound" in bad.reason
    assert "too few" in effective_data(tokens[:2], [3.0, 2.5], 2.7, 1e6).reason
    losses = [_law(d) for d in tokens]
    outside = effective_data(tokens, losses, _law(1e8), 4e6)  # 12.5x beyond the longest run
    assert outside.ratio is None and "outside the fitted range" in outside.reason
    within = effective_data(tokens, losses, _law(2e7), 4e6)  # 2.5x beyond it: extrapolated
    assert within.ratio == pytest.approx(5.0, rel=1e-3)
    above = effective_data(tokens, losses, _law(5e5), 4e6)  # worse than the shortest run
    assert above.ratio is None and "above" in above.reason


def test_a_near_miss_reads_as_a_near_miss():
    s = seeds_reached([40.0, math.inf, 44.0])  # one seed of three missed
    assert (s.reached, s.seeds, s.median) == (2, 3, 44.0)
    assert str(s) == "2 of 3 seeds reached (median 44.0)"
    assert "not reached" in str(seeds_reached([math.inf, math.inf, 10.0]))


def test_performance_profile_on_a_hand_made_table():
    table = {
        "e1": {"adamw": 100.0, "soap": 50.0},
        "e2": {"adamw": 100.0, "soap": 120.0},
        "e3": {"adamw": math.inf, "soap": 80.0},
    }
    prof = performance_profile(table, taus=[1.0, 1.5, 2.0, 4.0])
    assert prof["soap"] == [(1.0, 2 / 3), (1.5, 1.0), (2.0, 1.0), (4.0, 1.0)]
    assert prof["adamw"] == [(1.0, 1 / 3), (1.5, 1 / 3), (2.0, 2 / 3), (4.0, 2 / 3)]
