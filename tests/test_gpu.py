"""CUDA checks (``pytest -m gpu``; skipped without a GPU)."""

import pytest
import torch

from soap import SOAP, Shampoo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def tf32_on():
    """TF32 on through torch's new API (as HF Trainer's ``tf32=True``), restored after."""
    old = torch.backends.fp32_precision
    torch.backends.fp32_precision = "tf32"
    yield
    torch.backends.fp32_precision = old


@pytest.mark.parametrize("cls", [SOAP, Shampoo])
def test_cuda_matches_cpu(cls, tf32_on):
    """The optimizer switches TF32 off itself around its matmuls."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 16), (16, 16), (24,), (32, 32)]
    init = [torch.randn(*s, generator=gen) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(12)]
    cpu = [x.clone().requires_grad_() for x in init]
    gpu = [x.clone().cuda().requires_grad_() for x in init]
    # Shampoo's 1-D factor is rank-deficient for its first steps; with eps=1e-12 its inverse
    # root amplifies null-space rounding noise (device-dependent), so compare at eps=1e-3.
    kw = {"epsilon": 1e-3} if cls is Shampoo else {}
    oc, og = cls(cpu, precondition_frequency=3, **kw), cls(gpu, precondition_frequency=3, **kw)
    for gs in grads:
        for a, b, g in zip(cpu, gpu, gs, strict=True):
            a.grad, b.grad = g.clone(), g.cuda()
        oc.step()
        og.step()
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-3, atol=1e-4)


def test_bf16_params_on_cuda():
    p = torch.randn(64, 48, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    opt = SOAP([p], precondition_frequency=2)
    for _ in range(5):
        p.grad = torch.randn_like(p)
        opt.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["basis_0"].dtype == torch.float32
    assert torch.isfinite(p).all()


def test_trainer_bf16_on_cuda(tmp_path, cache_dir):
    from tests.helpers import metrics, run_inprocess, summary

    run_dir = tmp_path / "gpu"
    code = run_inprocess(
        ["optimizer=soap", "train.max_steps=20", "train.eval_every=10", f"run_dir={run_dir}"],
        cache_dir,
    )
    assert code == 0
    m = metrics(run_dir)
    assert m[-1]["loss"] < m[0]["loss"]
    s = summary(run_dir)
    assert s["peak_memory_bytes"] > 0 and "cuda" in (run_dir / "env.json").read_text()


_GLOBAL: dict = {}


@pytest.mark.parametrize("cls", [SOAP, Shampoo])
def test_compiled_step_as_a_global_on_cuda(cls):
    """PyTorch's "compiling the optimizer" recipe on CUDA: the step count is a CPU tensor
    feeding CUDA kernels and the refreshes are custom operators (soap/stepcount.py, ops.py):
    one compile after warm-up, no graph break, the eager values."""
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 16), (16, 16), (32, 32)]
    init = [torch.randn(*s, generator=gen) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(10)]
    kw = {"epsilon": 1e-3} if cls is Shampoo else {}

    @torch.compile
    def step():
        _GLOBAL["opt"].step()

    def run(compiled: bool):
        ps = [x.clone().cuda().requires_grad_() for x in init]
        _GLOBAL["opt"] = opt = cls(ps, lr=1e-2, precondition_frequency=3, **kw)
        graphs = []
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g.cuda()
            step() if compiled else opt.step()
            graphs.append(counters["stats"]["unique_graphs"])
        return ps, graphs

    eager, _ = run(False)
    torch._dynamo.reset()
    counters.clear()
    compiled, graphs = run(True)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert graphs[-1] == graphs[3], graphs
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-3, atol=1e-4)


def test_compiled_step_with_tf32_on_stops_in_one_line(tf32_on):
    """A compiled step cannot switch TF32 off: it raises, and inside soap.full_fp32 it runs."""
    import soap

    p = torch.randn(32, 32, device="cuda", requires_grad=True)
    opt = SOAP([p], precondition_frequency=2)
    step = torch.compile(opt.step)
    p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError, match="full_fp32"):
        for _ in range(3):
            step()
    torch._dynamo.reset()
    opt = SOAP([p], precondition_frequency=2)
    step = torch.compile(opt.step)
    with soap.full_fp32(p.device):
        for _ in range(3):
            step()
    assert torch.backends.fp32_precision == "tf32" and torch.isfinite(p).all()
