"""Muon and the AdamW of MuonAdamW against torch's own Muon and AdamW."""

import torch

from soap import (
    Muon,
)
from soap.muon import AdamW


def test_bucketed_adamw_matches_torch_adamw():
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 6), (8, 6), (6,), (300, 4)]
    init = [torch.randn(*s, generator=gen) for s in shapes]
    a = [x.clone().requires_grad_() for x in init]
    b = [x.clone().requires_grad_() for x in init]
    ours = AdamW(a, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ref = torch.optim.AdamW(b, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for _ in range(8):
        for pa, pb in zip(a, b, strict=True):
            pa.grad = torch.randn(pa.shape, generator=gen)
            pb.grad = pa.grad.clone()
        ours.step()
        ref.step()
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_muon_matches_torch_muon():
    """soap.Muon (batched, bucketed) takes the same steps as torch.optim.Muon."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 6), (8, 6), (6, 12), (10, 10)]
    init = [torch.randn(*s, generator=gen) for s in shapes]
    a = [x.clone().requires_grad_() for x in init]
    b = [x.clone().requires_grad_() for x in init]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    ours, ref = Muon(a, **kw), torch.optim.Muon(b, **kw)
    for _ in range(6):
        for pa, pb in zip(a, b, strict=True):
            pa.grad = torch.randn(pa.shape, generator=gen)
            pb.grad = pa.grad.clone()
        ours.step()
        ref.step()
    for pa, pb, x0 in zip(a, b, init, strict=True):
        # Newton-Schulz runs in bf16: batched and single matmuls round differently, by far
        # less than the distance the parameters moved.
        assert (pa - pb).abs().max() < 0.02 * (pb - x0).abs().max()
