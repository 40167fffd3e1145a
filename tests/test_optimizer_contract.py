"""The optimizers in other people's code (issue 20): torch's LR schedulers on MuonAdamW, and
state dicts from another optimizer class refused in one line at ``load_state_dict``."""

from __future__ import annotations

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
