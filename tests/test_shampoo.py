"""Shampoo (DistributedShampoo's maths with per-tensor grafting): against torch AdamW before
preconditioning, hand-checkable directions, state dicts, blocking, bf16 and NaN guards."""

import copy

import pytest
import torch

from soap import (
    Shampoo,
)
from tests.numerics import assert_within, calibrated, problem, run_steps


def test_before_start_equals_torch_adamw():
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (5,)]
    init = [torch.randn(*s, generator=gen) for s in shapes]
    a = [x.clone().requires_grad_() for x in init]
    b = [x.clone().requires_grad_() for x in init]
    sh = Shampoo(a, lr=1e-2, weight_decay=0.1, start_preconditioning_step=100, graft_eps=1e-8)
    ad = torch.optim.AdamW(
        b, lr=1e-2, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.1, foreach=False
    )
    for _ in range(10):
        gs = [torch.randn(*s, generator=gen) for s in shapes]
        for pa, pb, g in zip(a, b, gs, strict=True):
            pa.grad, pb.grad = g.clone(), g.clone()
        sh.step()
        ad.step()
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("root,power", [(4.0, 0.0), (2.0, -1.0)])
def test_constant_gradient_direction_is_hand_checkable(root, power):
    # With a constant G = U S V^T: L = G G^T, R = G^T G (bias corrected), so
    # L^(-1/r) G R^(-1/r) = U S^(1 - 4/r) V^T; grafted to Adam's norm ||sign(G)|| = sqrt(mn).
    m, n = 4, 4  # square: full-rank factors, so eps plays no role
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(m, n, generator=gen)
    p = torch.zeros(m, n, requires_grad=True)
    opt = Shampoo(
        [p],
        lr=1.0,
        weight_decay=0.0,
        root=root,
        start_preconditioning_step=1,
        precondition_frequency=1,
        epsilon=1e-12,
        precondition_1d=False,
    )
    p.grad = g
    opt.step()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    d = u @ torch.diag(s**power) @ vh
    adam_norm = (g / (g.abs() + 1e-8)).norm()
    expected = -d * adam_norm / d.norm()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-3, atol=1e-4)


def test_shampoo_state_dict_round_trip_and_batched_equals_plain():
    # A 1-D tensor's factor is rank one at first and epsilon=1e-12 makes its root chaotic, so
    # the 1-D tensor here is above max_preconditioner_dim (grafted Adam only): every other
    # factor keeps the calibrated tolerance meaningful (tests/numerics.py).
    shapes = [(6, 4), (6, 4), (6, 40), (40,)]
    init, grads = problem(shapes, 12)
    kw = dict(precondition_frequency=2, start_preconditioning_step=2, max_preconditioner_dim=32)

    def run(foreach, split=None):
        ps = [x.clone().requires_grad_() for x in init]
        opt = Shampoo(ps, foreach=foreach, **kw)
        for t, gs in enumerate(grads):
            if split is not None and t == split:
                sd = copy.deepcopy(opt.state_dict())
                ps = [p.detach().clone().requires_grad_() for p in ps]
                opt = Shampoo(ps, foreach=foreach, **kw)
                opt.load_state_dict(sd)
            for p, g in zip(ps, gs, strict=True):
                p.grad = g
            opt.step()
        return ps

    ref = run(True)
    for a, b in zip(ref, run(True, split=5), strict=True):
        assert torch.equal(a, b)
    want, tols = calibrated(lambda ps: Shampoo(ps, foreach=True, **kw), init, grads)
    assert_within(
        run_steps(lambda ps: Shampoo(ps, foreach=False, **kw), init, grads),
        want,
        tols,
        "plain vs batched",
    )


def test_shampoo_trains_and_validates():
    with pytest.raises(ValueError, match="root"):
        Shampoo([torch.zeros(2, requires_grad=True)], root=0)
    with pytest.raises(ValueError, match="epsilon"):
        Shampoo([torch.zeros(2, requires_grad=True)], epsilon=-1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(128, 10, generator=gen)
    y = x @ torch.randn(10, 6, generator=gen)
    w = torch.zeros(10, 6, requires_grad=True)
    opt = Shampoo([w], lr=0.05, weight_decay=0.0, precondition_frequency=5)
    losses = []
    for _ in range(150):
        loss = (x @ w - y).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.05 * losses[0]


def test_shampoo_bf16_and_nan_guard():
    p = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    opt = Shampoo(
        [p], start_preconditioning_step=1, precondition_frequency=1, nonfinite_grad="raise"
    )
    for _ in range(3):
        p.grad = torch.randn(4, 3, dtype=torch.bfloat16)
        opt.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["root_0"].dtype == torch.float32
    p.grad = torch.full((4, 3), float("nan"), dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step()


def test_blocked_vocabulary_matrix_equals_its_blocks_as_separate_parameters():
    """A first dimension above max_preconditioner_dim is cut into equal row blocks, each
    with its own factors, roots and grafting norm (DistributedShampoo's blocking)."""
    from soap.shampoo import block_size

    assert block_size(32100, 1024) == 642 and block_size(4096, 1024) == 1024
    assert block_size(300, 64) == 60 and block_size(1031, 64) is None  # a prime: identity
    # 40 x 10 in blocks of 10 x 10: every factor is full rank, so the calibrated tolerance
    # has teeth (tests/numerics.py).
    (x0,), grads = problem([(40, 10)], 7)
    kw = dict(
        lr=1e-2, precondition_frequency=2, start_preconditioning_step=2, max_preconditioner_dim=10
    )

    parts = [x0[i * 10 : (i + 1) * 10] for i in range(4)]
    want, tols = calibrated(
        lambda ps: Shampoo(ps, **kw),
        parts,
        [[g[i * 10 : (i + 1) * 10] for i in range(4)] for (g,) in grads],
    )
    whole = x0.clone().requires_grad_()
    o_whole = Shampoo([whole], **kw)
    for (g,) in grads:
        whole.grad = g.clone()
        o_whole.step()
    assert_within([whole.detach()], [torch.cat(want)], [max(tols)], "blocked vs separate")
    gen = torch.Generator().manual_seed(1)
    assert o_whole.state[whole]["factor_0"].shape == (4, 10, 10)
    # The state round-trips like any other.
    sd = copy.deepcopy(o_whole.state_dict())
    again = Shampoo([whole.detach().clone().requires_grad_()], **kw)
    again.load_state_dict(sd)
    assert again.state[again.param_groups[0]["params"][0]]["root_0"].shape == (4, 10, 10)
    # A state dict written before block_size existed still loads (defaults fill the gap).
    del sd["param_groups"][0]["block_size"]
    again.load_state_dict(sd)
    assert again.param_groups[0]["block_size"] == 1024
    # block_size caps the rows per block below max_preconditioner_dim (32100 rows with
    # max_preconditioner_dim=10000 would otherwise get 8025-row blocks): 40 rows, max 30,
    # block_size 10 -> 4 blocks of 10, not 2 of 20.
    w = torch.randn(40, 6, generator=gen).requires_grad_()
    capped = Shampoo([w], max_preconditioner_dim=30, block_size=10)
    w.grad = torch.randn(40, 6, generator=gen)
    capped.step()
    assert capped.state[w]["factor_0"].shape == (4, 10, 10)
