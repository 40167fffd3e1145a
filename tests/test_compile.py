"""``torch.compile(opt.step)``: no graph breaks, no recompiles after warm-up, eager numbers."""

import torch
from torch._dynamo.utils import counters

from soap import SOAP

SHAPES = [(16, 16), (16, 16), (16, 16), (32, 16), (300, 16), (16,)]


def _run(step_fn_of, steps, nan_at=None):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) for s in SHAPES]
    grads = [[torch.randn(*s, generator=gen) for s in SHAPES] for _ in range(steps)]
    params = [x.clone().requires_grad_() for x in init]
    opt = SOAP(params, lr=1e-2, precondition_frequency=3, max_precond_dim=64)
    step = step_fn_of(opt)
    graphs = []
    for t, gs in enumerate(grads):
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        if t == nan_at:
            params[0].grad[0, 0] = float("nan")
        step()
        graphs.append(counters["stats"]["unique_graphs"])
    return params, opt, graphs


def test_compiled_step_has_no_graph_breaks_nor_recompiles_and_matches_eager():
    torch._dynamo.reset()
    counters.clear()
    steps, warmup = 14, 5  # warm-up: first step, bucket rebuild, dynamic step, a refresh
    eager, _, _ = _run(lambda o: o.step, steps, nan_at=9)
    compiled, opt, graphs = _run(lambda o: torch.compile(o.step), steps, nan_at=9)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert graphs[-1] == graphs[warmup - 1], graphs  # nothing compiled after the warm-up
    assert graphs[-1] <= 5
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # The NaN gradient at step 9 was skipped on the device, inside the compiled graph.
    assert int(opt.skipped_updates) == 1
