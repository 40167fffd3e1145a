"""The protocol engine (scripts/experiments/protocol.py) on synthetic losses: what it runs,
in which phase, and how it stops."""

import math
from concurrent.futures import Future

import pytest

from scripts.experiments.protocol import CannotStart, Cell, Protocol, run


def done(value=None, exc=None) -> Future:
    f = Future()
    if exc is not None:
        f.set_exception(exc)
    else:
        f.set_result(value)
    return f


def bowl(centre: float):
    """Final loss as a bowl in log10(lr) around ``centre``."""
    return lambda c: 3.0 + (math.log10(c.lr) - math.log10(centre)) ** 2


def test_sweep_then_seeds_and_fractions_at_the_best():
    ran: list[Cell] = []
    p = Protocol("demo", ["adamw", "soap"], {"adamw": [1e-3, 3.16e-3, 1e-2], "soap": [1e-3, 3.16e-3, 1e-2]},
                 seeds=[0], best_seeds=[1, 2], fractions=[0.4, 0.8], max_extend=1)  # fmt: skip
    loss = bowl(3.16e-3)
    best = run(p, lambda c: ran.append(c) or done(loss(c)), log=lambda m: None)
    assert best == {"adamw": 3.16e-3, "soap": 3.16e-3}
    assert len(ran) == p.count() == 2 * (3 + 2 + 2)
    follow = [c for c in ran if c.phase != "sweep"]
    assert {c.lr for c in follow} == {3.16e-3}
    assert sorted((c.phase, c.fraction, c.seed) for c in follow if c.optimizer == "soap") == [
        ("fractions", 0.4, 0),
        ("fractions", 0.8, 0),
        ("seeds", 1.0, 1),
        ("seeds", 1.0, 2),
    ]


def test_runoff_chooses_the_best_lr_on_every_seed():
    """The CPU demo's case: on seed 0 lr 0.0316 edges out 0.01 (1.751 against 1.756), over
    every seed 0.01 is better; with ``runoff=2`` both run the extra seeds and 0.01 wins, its
    fractions follow, and the count includes the loser's seeds."""
    finals = {(1e-2, 0): 1.756, (1e-2, 1): 1.78, (1e-2, 2): 1.77, (3.16e-2, 0): 1.751}
    finals |= {(3.16e-2, 1): 1.85, (3.16e-2, 2): 1.84, (3.16e-3, 0): 1.79, (1e-1, 0): 1.88}
    ran: list[Cell] = []
    logs: list[str] = []
    p = Protocol("demo", ["adamw"], {"adamw": [3.16e-3, 1e-2, 3.16e-2, 1e-1]}, best_seeds=[1, 2],
                 fractions=[0.5], fraction_seeds=[0, 1], runoff=2)  # fmt: skip
    best = run(p, lambda c: ran.append(c) or done(finals.get((c.lr, c.seed), 2.0)), logs.append)
    assert best == {"adamw": 1e-2}
    seeds = sorted((c.lr, c.seed) for c in ran if c.phase == "seeds")
    assert seeds == [(1e-2, 1), (1e-2, 2), (3.16e-2, 1), (3.16e-2, 2)]
    assert {(c.lr, c.seed) for c in ran if c.phase == "fractions"} == {(1e-2, 0), (1e-2, 1)}
    assert len(ran) == p.count() == 4 + 4 + 2
    assert any("runoff chose lr 0.01" in m for m in logs)
    # without the runoff, the paper's pick on one seed: 0.0316
    p.runoff = 1
    assert run(p, lambda c: done(finals.get((c.lr, c.seed), 2.0)), lambda m: None) == {
        "adamw": 3.16e-2
    }
    # a tuned optimizer, or no extra seeds: no runoff
    assert not Protocol("x", ["adamw"], {"adamw": [1e-2]}, best_seeds=[0], runoff=2).runs_off(
        "adamw"
    )


def test_the_plans_budget_counts_what_the_engine_runs():
    """``--plan`` (scripts/experiments/plan.budget) and the engine count runs in one place:
    with the runoff, its budget is the run's own count (before any edge extension)."""
    from argparse import Namespace

    from scripts.experiments.plan import budget

    args = Namespace(optimizers=["adamw", "soap"], lrs=[3.16e-3, 1e-2, 3.16e-2], seeds=[0],
                     best_seeds=[1, 2], fractions=[0.5, 0.75], fraction_seeds=None, runoff=2)  # fmt: skip
    pl = {"h100_hours_full_run": 1.0, "h100_hours_fraction_runs": 0.0}
    p = Protocol("plan", args.optimizers, {o: args.lrs for o in args.optimizers}, seeds=[0],
                 best_seeds=[1, 2], fractions=[0.5, 0.75], runoff=2)  # fmt: skip
    ran: list[Cell] = []
    run(p, lambda c: ran.append(c) or done(bowl(1e-2)(c)), log=lambda m: None)
    assert budget(pl, args)[0] == p.count() == len(ran) == 2 * (3 + 2 * 2 + 2)
    assert budget(pl, args)[1] == 2 * (3 + 2 * 2)  # full-length runs at 1 H100-hour each


def test_fractions_run_with_their_own_seeds():
    """The demo's fit averages 3 seeds at each length: each fraction with every fraction seed,
    counted in the plan; without ``fraction_seeds``, the sweep's seeds as before."""
    ran: list[Cell] = []
    p = Protocol("demo", ["soap"], {"soap": [1e-3, 3.16e-3, 1e-2]}, best_seeds=[1, 2],
                 fractions=[0.4, 0.8, 1.0], fraction_seeds=[0, 1, 2])  # fmt: skip
    run(p, lambda c: ran.append(c) or done(bowl(3.16e-3)(c)), log=lambda m: None)
    fractions = sorted((c.fraction, c.seed) for c in ran if c.phase == "fractions")
    assert fractions == [(f, s) for f in (0.4, 0.8) for s in (0, 1, 2)]
    assert len(ran) == p.count() == 3 + 2 + 6
    assert Protocol("x", ["soap"], {"soap": [1e-3]}, seeds=[0, 5]).seeds_per_fraction == [0, 5]


def test_edge_extension_is_its_own_phase_and_bounded():
    ran: list[Cell] = []
    p = Protocol("x", ["adamw"], {"adamw": [1e-3, 3.16e-3]}, fractions=[0.5], max_extend=2)
    best = run(p, lambda c: ran.append(c) or done(bowl(1.0)(c)), log=lambda m: None)
    assert [c.lr for c in ran if c.phase == "extend"] == [0.01, 0.0316]  # then the bound
    assert best == {"adamw": 0.0316}
    assert [(c.phase, c.lr) for c in ran][-1] == ("fractions", 0.0316)


def test_tuned_optimizer_runs_its_lr_only_and_nothing_finite_gets_no_follow_ups():
    ran: list[Cell] = []
    p = Protocol("x", ["adamw", "soap"], {"adamw": [1e-3, 1e-2], "soap": [1e-3]},
                 best_seeds=[1], fractions=[0.5], tuned={"soap": 0.02})  # fmt: skip
    best = run(p, lambda c: ran.append(c) or done(None if c.optimizer == "adamw" else 3.0),
               log=lambda m: None)  # fmt: skip
    assert best == {"soap": 0.02}
    assert [c.phase for c in ran if c.optimizer == "adamw"] == ["sweep", "sweep"]
    assert [(c.phase, c.lr) for c in ran if c.optimizer == "soap"] == [
        ("tuned", 0.02), ("seeds", 0.02), ("fractions", 0.02)
    ]  # fmt: skip


def test_dry_run_shows_follow_ups_at_the_middle_lr():
    ran: list[Cell] = []
    p = Protocol("x", ["adamw"], {"adamw": [1e-3, 3e-3, 1e-2]}, fractions=[0.5])
    run(p, lambda c: ran.append(c) or done(None), log=lambda m: None, dry=True)
    assert [(c.phase, c.lr) for c in ran][-1] == ("fractions", 3e-3)


def test_a_run_that_cannot_start_stops_the_protocol():
    p = Protocol("x", ["adamw"], {"adamw": [1e-3, 1e-2]}, fractions=[0.5])
    with pytest.raises(CannotStart, match="bad"):
        run(p, lambda c: done(exc=CannotStart("bad")), log=lambda m: None)


def test_cell_overrides_carry_preset_and_phase_and_the_run_dir_last():
    over = Cell("soap", 0.01, 0.5, 2, "fractions").overrides("demo", "runs/x")
    assert "protocol.preset=demo" in over and "protocol.phase=fractions" in over
    assert "optimizer=soap" in over and "seed=2" in over and over[-1] == "run_dir=runs/x"
    assert "train.eval_every=1000000000" in over  # a fraction run: its final evaluation only
    assert not any(
        "eval_every" in o for o in Cell("soap", 0.01, 1.0, 2, "sweep").overrides("d", "r")
    )
    assert Cell("soap", 0.01, 0.5, 2, "fractions").name() == "lr0.01_frac0.5_seed2"
