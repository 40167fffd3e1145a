"""The optimizers in other people's code (issue 20): torch's LR schedulers on MuonAdamW, and
state dicts from another optimizer class refused in one line at ``load_state_dict``."""

from __future__ import annotations

import copy

import pytest
import torch

import soap


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))


def _stepped(opt, model, steps: int = 2):
    for _ in range(steps):
        model(torch.randn(5, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


MAKERS = {
    "SOAP": lambda m: soap.SOAP(m.parameters(), precondition_frequency=2),
    "Shampoo": lambda m: soap.Shampoo(m.parameters(), start_preconditioning_step=1),
    "AdamW": lambda m: torch.optim.AdamW(m.parameters()),
    "Muon": lambda m: soap.Muon([p for p in m.parameters() if p.dim() == 2]),
    "MuonAdamW": lambda m: soap.build_optimizer(m, "muon"),
}


@pytest.mark.parametrize("writer", list(MAKERS))
@pytest.mark.parametrize("reader", ["SOAP", "Shampoo", "Muon", "MuonAdamW"])
def test_state_dict_of_another_optimizer_is_refused_naming_both(writer, reader):
    if writer == reader:
        return
    m = _model()
    sd = _stepped(MAKERS[writer](m), m).state_dict()
    with pytest.raises(ValueError) as e:
        MAKERS[reader](m).load_state_dict(sd)
    msg = str(e.value)
    assert "\n" not in msg and f"{reader}.load_state_dict" in msg and writer in msg, msg


@pytest.mark.parametrize("reader", ["SOAP", "Shampoo", "Muon", "MuonAdamW"])
def test_own_state_dict_still_loads(reader):
    m = _model()
    sd = _stepped(MAKERS[reader](m), m).state_dict()
    _stepped(MAKERS[reader](m), m, 0).load_state_dict(sd)


def test_one_cycle_lr_cycles_muon_and_adamw_momentum():
    m = _model()
    opt = soap.build_optimizer(m, "muon")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    muon_group, adam_group = opt.param_groups[0], opt.param_groups[-1]
    for _ in range(4):
        _stepped(opt, m, 1)
        sched.step()
    m(torch.randn(5, 8)).square().mean().backward()
    opt.step()  # momentum reaches AdamW's beta1 before the step
    assert muon_group["momentum"] < 0.95 and adam_group["betas"][0] == adam_group["momentum"]
    assert adam_group["momentum"] == muon_group["momentum"]


@pytest.mark.parametrize(
    "make",
    [
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=1e-4, max_lr=1e-2),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, total_iters=2),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
            ],
            milestones=[2],
        ),
    ],
)
def test_torch_schedulers_drive_muon_adamw(make):
    m = _model()
    opt = soap.build_optimizer(m, "muon")
    sched = make(opt)
    lrs = []
    for t in range(5):
        _stepped(opt, m, 1)
        sched.step(1.0 + t) if isinstance(
            sched, torch.optim.lr_scheduler.ReduceLROnPlateau
        ) else sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    assert len({tuple(x) for x in lrs}) > 1  # the LRs moved, in every child's groups


# ---- the step count (soap/stepcount.py) -------------------------------------------------
@pytest.mark.parametrize("reader", ["SOAP", "Shampoo", "Muon", "MuonAdamW"])
def test_step_count_is_a_cpu_tensor_and_int_counts_still_load(reader):
    """torch's format for ``state['step']`` (a 0-dim fp32 CPU tensor); a state dict written
    when the count was an int (older soap-bench) loads and steps on identically."""
    m = _model()
    opt = _stepped(MAKERS[reader](m), m, steps=3)
    sd = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the live state dicts
    leaves = sd.get("optimizers", [sd])
    counts = [st["step"] for leaf in leaves for st in leaf["state"].values()]
    assert counts and all(c.shape == () and c.device.type == "cpu" for c in counts)
    for leaf in leaves:  # the old format
        for st in leaf["state"].values():
            st["step"] = int(st["step"])
    m2 = _model()
    m2.load_state_dict(m.state_dict())
    opt2 = MAKERS[reader](m2)
    opt2.load_state_dict(sd)
    for o, mod in ((opt, m), (opt2, m2)):
        torch.manual_seed(1)  # the same inputs for both
        _stepped(o, mod, steps=2)
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [soap.SOAP, soap.Shampoo])
def test_parameters_at_different_steps_never_share_a_bucket(cls):
    """Three same-shape matrices, two of them without a gradient on some steps, end at three
    different counts; stacked (foreach) they must step as they do one by one. Checked once
    by bucketing on "has state" alone: the counts came out wrong and the values moved."""
    from tests.numerics import (
        assert_has_teeth,
        assert_within,
        perturbed_grads,
        problem,
        tolerances,
    )

    init, grads = problem([(8, 8)] * 3, 9)  # full-rank factors: well-conditioned

    def run(foreach: bool, grads=grads):
        ps = [x.clone().requires_grad_() for x in init]
        opt = cls(ps, lr=1e-2, precondition_frequency=2, foreach=foreach)
        for t, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(ps, gs, strict=True)):
                idle = (i == 1 and 1 <= t <= 3) or (i == 2 and 5 <= t <= 6)
                p.grad = None if idle else g.clone()
            opt.step()
        return [p.detach() for p in ps], [int(opt.state[p]["step"]) for p in ps]

    got, got_steps = run(True)
    want, want_steps = run(False)
    assert got_steps == want_steps and len(set(got_steps)) == 3, (got_steps, want_steps)
    # Tolerance from the problem's own sensitivity (tests/numerics.py), checked to have teeth.
    tols = tolerances(want, run(False, perturbed_grads(grads))[0], 1e-6)
    assert_has_teeth(tols, want, init)
    assert_within(got, want, tols, f"{cls.__name__}: stacked vs one by one")
