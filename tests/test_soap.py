"""SOAP: equivalences, reference parity, state round-trips, numerics and faults."""

import copy
import io
import math
import warnings

import pytest
import torch

import soap.linalg
from soap import SOAP, NonFiniteGradientError, optimizer_state_bytes
from soap.layout import plan_shape
from tests.numerics import assert_within, calibrated, problem, run_steps
from tests.optim_reference import RefSOAP, adam_ref


def _grads(shapes, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(steps)]


def _run(opt_factory, shapes, steps, dtype=torch.float32, seed=1, params=None):
    gen = torch.Generator().manual_seed(0)
    if params is None:
        params = [torch.randn(*s, generator=gen).to(dtype).requires_grad_() for s in shapes]
    opt = opt_factory(params)
    for gs in _grads(shapes, steps, seed):
        for p, g in zip(params, gs, strict=True):
            p.grad = g.to(dtype)
        opt.step()
    return params, opt


def test_all_dims_above_max_is_adam_step_for_step():
    shapes = [(6, 5), (7,), (3, 4, 2)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) for s in shapes]
    params = [x.clone().requires_grad_() for x in init]
    ref = [x.clone() for x in init]
    opt = SOAP(params, lr=1e-2, max_precond_dim=1, weight_decay=0.1)
    state = {}
    grads = _grads(shapes, 8)
    for t, gs in enumerate(grads):
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
        if t == 0:  # the reference's first step only builds the (empty) basis
            for p, x in zip(params, init, strict=True):
                assert torch.equal(p.detach(), x)
            continue
        adam_ref(list(zip(ref, gs, strict=True)), state, 1e-2, (0.95, 0.95), 1e-8, 0.1, step=t)
        for p, r in zip(params, ref, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)
    assert all(not any(k.startswith("factor") for k in opt.state[p]) for p in params)


@pytest.mark.parametrize(
    "shapes,eps",
    [
        # Square matrices: the first gradient gives full-rank factors, so the eigenbasis is
        # unique up to signs. (For a rectangular first gradient the larger factor has a null
        # space whose basis is arbitrary; later gradients have components there and Adam is
        # not rotation invariant, so two correct implementations may legitimately differ.)
        ([(8, 8), (5,), (6, 6)], 1e-8),
        ([(4, 4), (7, 7)], 1e-3),
    ],
)
def test_matches_reference_soap_across_refreshes(shapes, eps):
    init, grads = problem(shapes, 14)
    want, tols = calibrated(lambda ps: RefSOAP(ps, lr=1e-2, freq=3, eps=eps), init, grads, 1e-5)
    got = run_steps(lambda ps: SOAP(ps, lr=1e-2, precondition_frequency=3, eps=eps), init, grads)
    assert_within(got, want, tols, "SOAP vs the reference")


def test_diagonal_problem_has_identity_basis_and_is_adam():
    # Diagonal gradients with distinct, ordered magnitudes: L and R are diagonal, so the
    # eigenbasis is the identity (up to signs) and SOAP equals Adam on the diagonal.
    n = 5
    scale = torch.arange(n, 0, -1).float()
    p = torch.zeros(n, n, requires_grad=True)
    q = torch.zeros(n, n)
    opt = SOAP([p], lr=0.1, weight_decay=0.0, precondition_frequency=2)
    state = {}
    for t in range(6):
        g = torch.diag(scale * (1.0 + 0.1 * t))
        p.grad = g
        opt.step()
        if t:
            adam_ref([(q, g)], state, 0.1, (0.95, 0.95), 1e-8, 0.0, step=t)
    for i in (0, 1):
        basis = opt.state[p][f"basis_{i}"]
        torch.testing.assert_close(basis.abs(), torch.eye(n), atol=1e-5, rtol=0)
    torch.testing.assert_close(p.detach(), q, atol=1e-5, rtol=1e-5)


def test_merge_dims_equals_reshaped_matrix():
    assert plan_shape(
        (4, 5, 6), merge_dims=True, max_precond_dim=30, data_format="channels_first"
    ).shape == (20, 6)
    assert plan_shape(
        (50, 3), merge_dims=True, max_precond_dim=30, data_format="channels_first"
    ).shape == (50, 3)
    gen = torch.Generator().manual_seed(0)
    # (4, 5, 20) merges to a square (20, 20): full-rank factors, a well-conditioned problem.
    x = torch.randn(4, 5, 20, generator=gen)
    p3 = x.clone().requires_grad_()
    p2 = x.reshape(20, 20).clone().requires_grad_()
    o3 = SOAP([p3], merge_dims=True, max_precond_dim=30, precondition_frequency=2)
    o2 = SOAP([p2], max_precond_dim=30, precondition_frequency=2)
    for (g,) in _grads([(4, 5, 20)], 7):
        p3.grad, p2.grad = g, g.reshape(20, 20)
        o3.step()
        o2.step()
    assert o3.state[p3]["factor_0"].shape == (20, 20)
    torch.testing.assert_close(p3.detach().reshape(20, 20), p2.detach(), rtol=1e-5, atol=1e-6)


def test_3d_without_merge_has_a_factor_per_dim():
    params, opt = _run(lambda ps: SOAP(ps, precondition_frequency=2), [(3, 4, 5)], 6)
    st = opt.state[params[0]]
    assert [st[f"factor_{i}"].shape[0] for i in range(3)] == [3, 4, 5]
    assert torch.isfinite(params[0]).all()


def test_channels_last_equals_permuted_channels_first():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 2, generator=gen)  # (N, H, W, C)
    p_last = x.clone().requires_grad_()
    p_first = x.permute(0, 3, 1, 2).contiguous().requires_grad_()
    o_last = SOAP(
        [p_last],
        data_format="channels_last",
        merge_dims=True,
        max_precond_dim=8,
        precondition_frequency=2,
    )
    o_first = SOAP([p_first], merge_dims=True, max_precond_dim=8, precondition_frequency=2)
    for (g,) in _grads([(3, 4, 5, 2)], 6):
        p_last.grad, p_first.grad = g, g.permute(0, 3, 1, 2).contiguous()
        o_last.step()
        o_first.step()
    torch.testing.assert_close(
        p_last.detach().permute(0, 3, 1, 2), p_first.detach(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("precondition_1d", [False, True])
def test_1d_params(precondition_1d):
    params, opt = _run(lambda ps: SOAP(ps, precondition_1d=precondition_1d), [(7,)], 5)
    st = opt.state[params[0]]
    assert ("factor_0" in st) == precondition_1d
    if precondition_1d:
        assert st["basis_0"].shape == (7, 7)
        q = st["basis_0"]
        torch.testing.assert_close(q.T @ q, torch.eye(7), atol=1e-5, rtol=0)


def test_state_dict_round_trip_mid_run_after_refresh():
    shapes = [(6, 4), (6, 4), (4,), (10, 3)]
    grads = _grads(shapes, 16)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) for s in shapes]

    def make(ps):
        return SOAP(ps, lr=1e-2, precondition_frequency=3)

    full = [x.clone().requires_grad_() for x in init]
    o_full = make(full)
    part = [x.clone().requires_grad_() for x in init]
    o_part = make(part)
    for t, gs in enumerate(grads):
        for p, g in zip(full, gs, strict=True):
            p.grad = g
        o_full.step()
        if t < 7:  # 7 steps: the basis has been refreshed (steps 3 and 6)
            for p, g in zip(part, gs, strict=True):
                p.grad = g
            o_part.step()
    buf = io.BytesIO()
    torch.save({"opt": o_part.state_dict(), "params": [p.detach() for p in part]}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = [x.clone().requires_grad_() for x in saved["params"]]
    o_res = make(resumed)
    o_res.load_state_dict(saved["opt"])
    for gs in grads[7:]:
        for p, g in zip(resumed, gs, strict=True):
            p.grad = g
        o_res.step()
    for a, b in zip(full, resumed, strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_batched_path_equals_plain_path():
    # Full-rank factors only (squares; 40 > max_precond_dim is the identity side), so the
    # tolerance, calibrated from the problem's own sensitivity, has teeth (tests/numerics.py).
    shapes = [(8, 8)] * 4 + [(8, 40)] * 3 + [(16,)] * 2 + [(40, 8)]
    init, grads = problem(shapes, 12)
    want, tols = calibrated(
        lambda ps: SOAP(ps, precondition_frequency=3, max_precond_dim=32, foreach=False),
        init,
        grads,
    )
    got = run_steps(lambda ps: SOAP(ps, precondition_frequency=3, max_precond_dim=32), init, grads)
    assert_within(got, want, tols, "batched vs plain")


def test_bf16_params_keep_fp32_state():
    shapes = [(8, 6), (6,)]
    params, opt = _run(
        lambda ps: SOAP(ps, precondition_frequency=2), shapes, 6, dtype=torch.bfloat16
    )
    assert all(p.dtype == torch.bfloat16 for p in params)
    for p in params:
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == torch.float32, k
    sd = copy.deepcopy(opt.state_dict())
    opt2 = SOAP(params, precondition_frequency=2)
    opt2.load_state_dict(sd)
    assert opt2.state[params[0]]["factor_0"].dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"betas": (1.0, 0.9)},
        {"betas": (0.9,)},
        {"eps": 0.0},
        {"weight_decay": -0.1},
        {"precondition_frequency": 0},
        {"precondition_frequency": 2.5},
        {"max_precond_dim": 0},
        {"shampoo_beta": 1.5},
        {"data_format": "nhwc"},
        {"nonfinite_grad": "explode"},
    ],
)
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="SOAP"):
        SOAP([torch.zeros(2, 2, requires_grad=True)], **kwargs)


def test_invalid_hyperparameter_in_param_group():
    with pytest.raises(ValueError, match="learning rate"):
        SOAP([{"params": [torch.zeros(2, requires_grad=True)], "lr": -1}])


def test_closure_runs_with_grad_enabled_and_returns_loss():
    w = torch.randn(4, 3, requires_grad=True)
    opt = SOAP([w], lr=0.05)
    x = torch.randn(16, 4)

    def closure():
        opt.zero_grad()
        loss = (x @ w).square().mean()
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(30)]
    assert losses[-1] < losses[0]


def test_rank_deficient_and_ill_conditioned_factors_stay_finite():
    p = torch.zeros(12, 10, requires_grad=True)
    opt = SOAP([p], precondition_frequency=2)
    u, v = torch.randn(12, 1), torch.randn(1, 10)
    for t in range(8):
        p.grad = (u @ v) * (10.0 ** (6 * (t % 2))) + 1e-20 * torch.randn(12, 10)
        opt.step()
    for val in opt.state[p].values():
        if isinstance(val, torch.Tensor):
            assert torch.isfinite(val).all()
    assert torch.isfinite(p).all()


def test_forced_eigh_failure_keeps_previous_basis(monkeypatch):
    p = torch.randn(6, 5, requires_grad=True)
    opt = SOAP([p], precondition_frequency=2)
    p.grad = torch.randn(6, 5)
    opt.step()
    before = opt.state[p]["basis_0"].clone()

    def boom(m):
        raise torch.linalg.LinAlgError("forced failure")

    monkeypatch.setattr(soap.linalg, "_eigh", boom)
    soap.linalg._warned.clear()
    q = torch.randn(6, 6, requires_grad=True)
    opt_new = SOAP([q])
    q.grad = torch.randn(6, 6)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opt_new.step()  # first step needs eigh: falls back to the identity basis
    assert any("eigendecomposition failed" in str(x.message) for x in w)
    torch.testing.assert_close(opt_new.state[q]["basis_0"], torch.eye(6))
    # The running optimizer's refresh uses QR, not eigh, so it keeps working.
    for _ in range(4):
        p.grad = torch.randn(6, 5)
        opt.step()
    assert torch.isfinite(opt.state[p]["basis_0"]).all()
    assert not torch.equal(before, opt.state[p]["basis_0"])


def test_eigh_falls_back_to_fp64(monkeypatch):
    calls = []
    real = torch.linalg.eigh

    def flaky(m):
        calls.append(m.dtype)
        if m.dtype == torch.float32:
            raise torch.linalg.LinAlgError("fp32 failure")
        return real(m)

    monkeypatch.setattr(soap.linalg, "_eigh", flaky)
    p = torch.randn(5, 4, requires_grad=True)
    opt = SOAP([p])
    p.grad = torch.randn(5, 4)
    opt.step()
    assert torch.float64 in calls
    q = opt.state[p]["basis_0"]
    torch.testing.assert_close(q.T @ q, torch.eye(5), atol=1e-5, rtol=0)


def test_nan_gradient_raises_naming_parameter_and_leaves_state():
    lin = torch.nn.Linear(4, 3)
    opt = SOAP(lin.named_parameters(), lr=0.1, nonfinite_grad="raise")
    for _ in range(3):
        lin.weight.grad, lin.bias.grad = torch.randn(3, 4), torch.randn(3)
        opt.step()
    snap = copy.deepcopy(opt.state_dict())
    w_before = lin.weight.detach().clone()
    lin.weight.grad = torch.full((3, 4), float("nan"))
    lin.bias.grad = torch.randn(3)
    with pytest.raises(NonFiniteGradientError, match="weight"):
        opt.step()
    assert torch.equal(lin.weight.detach(), w_before)
    now = opt.state_dict()
    for idx, st in snap["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, now["state"][idx][k]), k


@pytest.mark.parametrize("on_device", [False, True])
def test_nan_gradient_skip_mode_skips_only_that_param(on_device, monkeypatch):
    """The default mode leaves a parameter with a NaN/inf gradient (value and every state
    tensor) untouched and steps the others. ``on_device`` forces the mask path taken on GPUs
    and under compile (no host check) on CPU."""
    from soap._base import BucketedOptimizer

    if on_device:
        monkeypatch.setattr(BucketedOptimizer, "_host_all_finite", staticmethod(lambda g: False))
    shapes = [(3, 3), (3, 3), (5, 5), (4,)]  # full-rank factors: well-conditioned
    params = [torch.randn(*s, requires_grad=True) for s in shapes]
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt, opt_ref = SOAP(params, precondition_frequency=2), SOAP(ref, precondition_frequency=2)
    for _ in range(3):
        for p, q in zip(params, ref, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        opt_ref.step()
    a0 = params[0].detach().clone()
    st = opt.state[params[0]]
    st0 = {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor) and k != "step"}
    for p, q in zip(params, ref, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    params[0].grad[1, 1] = float("nan")
    opt.step()
    ref[0].grad = None  # the reference simply does not step it
    opt_ref.step()
    assert torch.equal(params[0].detach(), a0)
    for k, v in st0.items():
        assert torch.equal(opt.state[params[0]][k], v), k
    for p, q in zip(params[1:], ref[1:], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert int(opt.skipped_updates) == 1


@pytest.mark.parametrize(
    "kwargs,formula",
    [
        ({}, lambda m, n: 2 * m * m + 2 * n * n + 3 * m * n),
        ({"one_sided": True}, lambda m, n: 2 * min(m, n) ** 2 + 3 * m * n),
        (
            {"one_sided": True, "factorized": True},
            lambda m, n: 2 * min(m, n) ** 2 + 2 * m * n + m + n,
        ),
    ],
)
def test_state_memory_matches_paper_formulas(kwargs, formula):
    m, n = 12, 7
    p = torch.randn(m, n, requires_grad=True)
    opt = SOAP([p], **kwargs)
    for _ in range(3):
        p.grad = torch.randn(m, n)
        opt.step()
    # The paper counts the gradient, not the step count (one fp32 scalar, torch's format).
    floats = optimizer_state_bytes(opt) // 4 - 1 + p.grad.numel()
    assert floats == formula(m, n)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"one_sided": True},
        {"factorized": True},
        {"one_sided": True, "factorized": True},
        {"normalize_grads": True},
    ],
)
def test_variants_train_a_least_squares_problem(kwargs):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(128, 10, generator=gen)
    w_true = torch.randn(10, 6, generator=gen)
    y = x @ w_true
    w = torch.zeros(10, 6, requires_grad=True)
    opt = SOAP([w], lr=0.05, weight_decay=0.0, precondition_frequency=5, **kwargs)
    first = None
    for _ in range(150):
        loss = (x @ w - y).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_factorized_second_moment_is_rank_one():
    # No rotation (max_precond_dim=1), so the moments see the raw gradients: the row/column
    # statistics are EMAs of mean(g^2) over columns/rows, and the second moment the update
    # divides by is their rank-one product row col^T / mean(row) (paper Sec. 5, Adafactor).
    b2, lr = 0.95, 0.1
    p = torch.zeros(6, 4, requires_grad=True)
    opt = SOAP([p], lr=lr, betas=(0.9, b2), factorized=True, max_precond_dim=1, weight_decay=0)
    grads = _grads([(6, 4)], 4)
    row, col, m = torch.zeros(6), torch.zeros(4), torch.zeros(6, 4)
    expected = torch.zeros(6, 4)
    for t, (g,) in enumerate(grads):
        p.grad = g
        opt.step()
        if t == 0:  # the first step only builds the (empty) bases
            continue
        row = b2 * row + (1 - b2) * g.square().mean(1)
        col = b2 * col + (1 - b2) * g.square().mean(0)
        m = 0.9 * m + 0.1 * g
        v = torch.outer(row, col) / row.mean()
        assert torch.linalg.matrix_rank(v) == 1
        expected -= lr * math.sqrt(1 - b2**t) / (1 - 0.9**t) * m / (v.sqrt() + 1e-8)
    st = opt.state[p]
    assert "exp_avg_sq" not in st
    torch.testing.assert_close(st["exp_avg_sq_row"], row)
    torch.testing.assert_close(st["exp_avg_sq_col"], col)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_vocab_sized_dimension_gets_identity():
    p = torch.randn(300, 8, requires_grad=True)
    opt = SOAP([p], max_precond_dim=100)
    for _ in range(2):
        p.grad = torch.randn(300, 8)
        opt.step()
    st = opt.state[p]
    assert "factor_0" not in st and st["factor_1"].shape == (8, 8)


def test_step_size_uses_reference_bias_correction():
    # One non-trivial step with no factors: |update| = lr*sqrt(1-b2)/(1-b1) * |g|/(|g|+eps).
    p = torch.zeros(3, requires_grad=True)
    opt = SOAP([p], lr=0.1, weight_decay=0.0)
    for _ in range(2):
        p.grad = torch.tensor([1.0, -2.0, 4.0])
        opt.step()
    # t=1: m = (1-b1) g, v = (1-b2) g^2, so m/sqrt(v) = sqrt(1-b1) sign(g) (b1 = b2) and the
    # step is lr * sqrt(1-b2)/(1-b1) * sqrt(1-b1) = lr per coordinate.
    expected = (
        -0.1
        * math.sqrt(1 - 0.95)
        / (1 - 0.95)
        * math.sqrt(1 - 0.95)
        * torch.tensor([1.0, -1.0, 1.0])
    )
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_compile_path_matches_eager():
    init, grads = problem([(6, 6), (6, 40), (6,)], 5)
    want, tols = calibrated(
        lambda ps: SOAP(ps, precondition_frequency=2, max_precond_dim=32), init, grads
    )
    got = run_steps(
        lambda ps: SOAP(ps, precondition_frequency=2, max_precond_dim=32, compile=True),
        init,
        grads,
    )
    assert_within(got, want, tols, "compile=True vs eager")


def test_reference_format_state_dict_is_refused_in_one_line():
    # What the public reference SOAP saves: GG/Q lists next to the moments.
    p = torch.randn(4, 3, requires_grad=True)
    ref_sd = {
        "state": {
            0: {
                "step": 3,
                "exp_avg": torch.zeros(4, 3),
                "exp_avg_sq": torch.zeros(4, 3),
                "GG": [torch.zeros(4, 4), torch.zeros(3, 3)],
                "Q": [torch.eye(4), torch.eye(3)],
            }
        },
        "param_groups": [{**SOAP([p]).param_groups[0], "params": [0]}],
    }
    opt = SOAP([p])
    with pytest.raises(ValueError, match="reference SOAP") as e:
        opt.load_state_dict(ref_sd)
    assert "\n" not in str(e.value)
    assert not opt.state  # nothing half-loaded


@pytest.mark.parametrize("shape", [(40, 4), (4, 40), (12, 10), (50, 6, 3)])
def test_refresh_reexpresses_first_moment_exactly(shape):
    """After a refresh the first moment (kept rotated) must equal the old one taken back to
    parameter coordinates and rotated into the new basis, whichever way each dimension is
    computed (out and back in, or by the small change-of-basis matrix)."""
    from soap import functional as F
    from soap.layout import basis_key, factor_key
    from soap.ops import soap_refresh_

    gen = torch.Generator().manual_seed(0)
    p = torch.randn(*shape, requires_grad=True)
    opt = SOAP([p], precondition_frequency=1000)
    for _ in range(3):
        p.grad = torch.randn(*shape, generator=gen)
        opt.step()
    st = opt.state[p]
    dims = range(len(shape))
    buf = {k: v.unsqueeze(0).clone() for k, v in st.items() if k != "step"}
    bases = [buf[basis_key(i)] for i in dims]
    factors = [buf[factor_key(i)] for i in dims]
    momentum = F.rotate(buf["exp_avg"], [q.clone() for q in bases], transpose=False)
    soap_refresh_(buf, factors, bases, factored=False)
    expected = F.rotate(momentum, bases, transpose=True)
    torch.testing.assert_close(buf["exp_avg"], expected, rtol=1e-4, atol=1e-5)
    for q in bases:  # still orthonormal
        torch.testing.assert_close(q[0].mT @ q[0], torch.eye(q.shape[-1]), atol=1e-4, rtol=0)


def test_add_param_group_mid_training_equals_separate_optimizers():
    """A group added after some steps starts its own lazy state; the old group goes on as if
    nothing happened (the bucket plan is rebuilt)."""
    gen = torch.Generator().manual_seed(0)
    a0, b0 = torch.randn(6, 5, generator=gen), torch.randn(4, 4, generator=gen)
    grads = [(torch.randn(6, 5, generator=gen), torch.randn(4, 4, generator=gen)) for _ in range(5)]
    kw = dict(lr=1e-2, precondition_frequency=2)
    a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    opt = SOAP([a], **kw)
    ra, rb = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    opt_a, opt_b = SOAP([ra], **kw), SOAP([rb], **kw)
    for i, (ga, gb) in enumerate(grads):
        if i == 2:
            opt.add_param_group({"params": [b], "lr": 2e-2})
            opt_b.param_groups[0]["lr"] = 2e-2
        a.grad, ra.grad = ga.clone(), ga.clone()
        opt_a.step()
        if i >= 2:
            b.grad, rb.grad = gb.clone(), gb.clone()
            opt_b.step()
        opt.step()
    torch.testing.assert_close(a, ra, rtol=0, atol=0)
    torch.testing.assert_close(b, rb, rtol=0, atol=0)
    # 3 steps taken; the first only builds the bases (reference semantics), so step == 2
    assert opt.state[b]["step"] == 2 and not torch.equal(b.detach(), b0)
