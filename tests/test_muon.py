"""Muon and the AdamW of MuonAdamW against torch's own Muon and AdamW."""

import pytest
import torch

from soap import Muon
from soap.adamw import AdamW


def _side_by_side(make_ours, make_ref, shapes, steps):
    """Both optimizers on copies of the same parameters and gradients: (ours, ref, start)."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) for s in shapes]
    a = [x.clone().requires_grad_() for x in init]
    b = [x.clone().requires_grad_() for x in init]
    ours, ref = make_ours(a), make_ref(b)
    for _ in range(steps):
        for pa, pb in zip(a, b, strict=True):
            pa.grad = torch.randn(pa.shape, generator=gen)
            pb.grad = pa.grad.clone()
        ours.step()
        ref.step()
    return a, b, init


def test_bucketed_adamw_matches_torch_adamw():
    kw = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    a, b, _ = _side_by_side(
        lambda ps: AdamW(ps, **kw),
        lambda ps: torch.optim.AdamW(ps, **kw, foreach=False),
        [(8, 6), (8, 6), (6,), (300, 4)],
        8,
    )
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_muon_matches_torch_muon():
    """soap.Muon (batched, bucketed) takes the same steps as torch.optim.Muon."""
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    a, b, init = _side_by_side(
        lambda ps: Muon(ps, **kw),
        lambda ps: torch.optim.Muon(ps, **kw),
        [(8, 6), (8, 6), (6, 12), (10, 10)],
        6,
    )
    for pa, pb, x0 in zip(a, b, init, strict=True):
        # Newton-Schulz runs in bf16: batched and single matmuls round differently, by far
        # less than the distance the parameters moved.
        assert (pa - pb).abs().max() < 0.02 * (pb - x0).abs().max()


def test_a_schedule_still_reaches_muonadamws_children_after_load_state_dict():
    """``soap.checkpoint`` loads each child itself, and a child's ``load_state_dict`` replaces
    its group dicts; ChainedOptimizer kept a list of the old ones, so after a resume the LR
    schedule wrote into dicts no child read (found by the lineup's SIGKILL test: the second
    step after the resume went on at the checkpoint's LR)."""
    import copy

    from soap import MuonAdamW
    from soap.checkpoint import load_named_state, named_state

    def make():
        torch.manual_seed(0)
        w, b = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.zeros(8))
        opt = MuonAdamW([("w", w), ("b", b)], lr=1e-2, adamw_lr=1e-2)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))

    a, sa = make()
    for p in [q for g in a.param_groups for q in g["params"]]:
        p.grad = torch.ones_like(p)
    a.step()
    sa.step()
    b, sb = make()
    names = {id(p): f"p{i}" for i, p in enumerate(q for g in a.param_groups for q in g["params"])}
    flat = copy.deepcopy(named_state(a, names))
    load_named_state(
        b,
        flat,
        {id(p): f"p{i}" for i, p in enumerate(q for g in b.param_groups for q in g["params"])},
    )
    sb.load_state_dict(sa.state_dict())
    sb.step()
    child_lrs = [g["lr"] for o in b.optimizers for g in o.param_groups]
    assert child_lrs == [g["lr"] for g in b.param_groups] == pytest.approx([1e-2 / 3] * 2)
