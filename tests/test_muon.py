"""Muon and the AdamW of MuonAdamW against torch's own Muon and AdamW."""

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
