"""CUDA's rules, enforced on a CPU: the paths only a GPU takes, guarded without one.

TF32 through torch's new API (what HF Trainer's ``tf32=True`` sets) must neither crash the
optimizers nor reach their matmuls, eagerly or compiled; the chunked loss must run its
vocabulary matmuls in the autocast dtype; collectives' tensors in ``soap/distributed`` must
be built on the parameters' device (NCCL has no CPU tensors; the runtime check is in
tests/dist_worker.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import soap
import soap.linalg
from soap import SOAP, Shampoo

REPO = Path(__file__).resolve().parents[1]
MATMULS = {"mm", "bmm", "addmm", "baddbmm", "matmul", "linalg_eigh", "linalg_qr", "_linalg_eigh"}


class Record(TorchDispatchMode):
    """Each matmul-like op's name, dtypes and the CUDA matmul precision in force when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[torch.dtype], str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        if name in MATMULS:
            dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((name, dtypes, torch.backends.cuda.matmul.fp32_precision))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def cuda_path(monkeypatch):
    """The optimizers take their CUDA precision path on CPU tensors; TF32 restored after."""
    monkeypatch.setattr(soap.linalg, "_tf32_matters", lambda device: True)
    old = (torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    yield
    torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision = old


def _make(cls, ps):
    kw = {"start_preconditioning_step": 2} if cls is Shampoo else {}
    return cls(ps, lr=1e-2, precondition_frequency=2, **kw)


def _problem():
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(12, 8, generator=gen)) for _ in range(2)]
    grads = [[torch.randn(12, 8, generator=gen) for _ in ps] for _ in range(5)]
    return ps, grads


@pytest.mark.parametrize("cls", [SOAP, Shampoo])
@pytest.mark.parametrize("api", ["new", "legacy"])
def test_tf32_set_by_either_api_is_off_inside_the_step_and_restored(cls, api, cuda_path):
    """Failed before the fix: reading ``allow_tf32`` after the new API raised ("mix of the
    legacy and new APIs")."""
    if api == "new":
        torch.backends.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    before = torch.backends.cuda.matmul.fp32_precision
    ps, grads = _problem()
    opt = _make(cls, ps)
    rec = Record()
    with rec:
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g
            opt.step()
    assert rec.calls, "no matmul seen"
    assert {c[2] for c in rec.calls} == {"ieee"}, sorted({c[2] for c in rec.calls})
    assert torch.backends.cuda.matmul.fp32_precision == before
    assert soap.linalg.cuda_tf32_enabled()
    if api == "legacy":
        assert torch.backends.cuda.matmul.allow_tf32  # the legacy read still works after


@pytest.mark.parametrize("cls", [SOAP, Shampoo])
def test_compiled_step_refuses_tf32_in_one_line_and_runs_inside_full_fp32(cls, cuda_path):
    """A compiled graph cannot switch TF32 off (dynamo drops the write): the step checks at
    run time and names the fix; inside ``soap.full_fp32`` the same compiled step runs, with
    no graph break. Before the fix the compiled step ran silently with TF32 on."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ps, grads = _problem()
    opt = _make(cls, ps)
    step = torch.compile(opt.step)
    for gs in grads[:3]:
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        step()
    torch.backends.fp32_precision = "tf32"
    for p, g in zip(ps, grads[3], strict=True):
        p.grad = g
    with pytest.raises(RuntimeError, match=r"soap\.full_fp32\(device\)"):
        step()
    with soap.full_fp32(torch.device("cuda")):
        assert not soap.linalg.cuda_tf32_enabled()
        step()
    assert soap.linalg.cuda_tf32_enabled()  # restored
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch._dynamo.reset()


def test_chunked_loss_runs_its_vocabulary_matmuls_in_bf16_under_autocast():
    """The decoder's fp32 hidden states under bf16 autocast: the three vocabulary-sized
    products of the chunked loss (logits, dL/dh, dL/dW) run in bf16, as the output projection
    would, and the loss and gradients stay within bf16's tolerance of fp32. Failed before the
    fix: every product ran in fp32."""
    from models.loss import lm_loss

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 33, 64, generator=gen).requires_grad_()
    weight = (0.05 * torch.randn(300, 64, generator=gen)).requires_grad_()
    ids = torch.randint(0, 300, (2, 33), generator=gen)
    ref = lm_loss(hidden, weight, ids, 1e-4, chunk=16)[1]
    gh, gw = torch.autograd.grad(ref, (hidden, weight))
    rec = Record()
    with rec, torch.autocast("cpu", dtype=torch.bfloat16):
        total = lm_loss(hidden, weight, ids, 1e-4, chunk=16)[1]
    bh, bw = torch.autograd.grad(total, (hidden, weight))
    vocab = [c for c in rec.calls if c[0] in ("mm", "addmm", "matmul", "bmm")]
    assert len(vocab) == 3 * 4, vocab  # 4 chunks of 16 of 64 tokens, 3 products each
    assert all(set(d) == {torch.bfloat16} for _, d, _ in vocab), {tuple(d) for _, d, _ in vocab}
    assert total.dtype == torch.float32 and bh.dtype == torch.float32 and bw.dtype == torch.float32
    torch.testing.assert_close(total, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(bh, gh, rtol=5e-2, atol=2e-3)
    torch.testing.assert_close(bw, gw, rtol=5e-2, atol=2e-3)
    # Evaluation (no gradient) takes the same dtype.
    rec = Record()
    with rec, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lm_loss(hidden, weight, ids, 1e-4, chunk=16)
    assert rec.calls and all(set(d) == {torch.bfloat16} for _, d, _ in rec.calls)


# ---- tensors built without a device in soap/distributed (NCCL takes none on the CPU) ------
FACTORIES = {"tensor", "empty", "zeros", "ones", "full", "arange", "randn", "rand", "eye"}


def _deviceless_factories(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if not any(k.arg == "device" for k in node.keywords):
            found.append(f"{path.name}:{node.lineno}: torch.{f.attr}(...)")
    return found


def test_no_tensor_in_soap_distributed_is_built_without_a_device():
    """Lint: every ``torch.<factory>(...)`` in soap/distributed names its device (the
    ``_like`` and ``new_*`` forms inherit one). Failed before the fix on sharded.py's
    ``torch.tensor`` / ``torch.empty`` of the row counts."""
    bad = [
        x
        for p in sorted((REPO / "soap" / "distributed").glob("*.py"))
        for x in _deviceless_factories(p)
    ]
    assert not bad, "tensors built without device= (NCCL needs them on the GPU):\n" + "\n".join(bad)


def test_the_lint_catches_a_deviceless_constructor(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import torch\na = torch.empty(3)\nb = torch.zeros(2, device=d)\n")
    assert _deviceless_factories(f) == ["x.py:2: torch.empty(...)"]


# ---- a resume that sees fewer GPUs; the trainer's finite check reaching the optimizer -----
class FakeCuda:
    """torch.cuda's RNG calls on a machine of ``n`` GPUs, this rank on ``current``."""

    def __init__(self, n: int, current: int) -> None:
        self.n, self.current, self.set = n, current, []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: torch.tensor([d, 7]))

        def set_state(state, d):
            if d >= self.n:
                raise RuntimeError(f"invalid device ordinal {d}")
            self.set.append((d, state.tolist()))

        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)

        def set_all(states):  # what the old code called: one per saved device
            for i, s in enumerate(states):
                set_state(s, i)

        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)


def test_resume_with_fewer_visible_gpus_restores_this_ranks_generator(monkeypatch):
    """Saved on 8 visible GPUs, resumed on 1 (rank 0). Failed before the fix: the old format
    held all 8 states and ``set_rng_state_all`` raised on device 1."""
    from scripts.trainer.run import rng_state, set_rng_state

    fake = FakeCuda(n=1, current=0)
    fake.install(monkeypatch)
    s = rng_state()
    assert s["cuda_device"].tolist() == [0, 7]  # this rank's device only
    set_rng_state(s)
    assert fake.set == [(0, [0, 7])]
    old = {k: v for k, v in s.items() if k != "cuda_device"}
    old["cuda"] = [torch.tensor([i, 9]) for i in range(8)]  # a checkpoint of the old format
    fake.set.clear()
    set_rng_state(old)
    assert fake.set == [(0, [0, 9])]


def test_the_trainers_finite_norm_spares_the_optimizers_masked_path(monkeypatch):
    """On a GPU ``host_all_finite`` is False (no free host read), so every step took the
    masked non-finite path although the trainer had just read a finite gradient norm.
    ``grads_checked_finite`` passes that knowledge on, for one step."""
    import soap._base as base

    monkeypatch.setattr(base.BucketedOptimizer, "_host_all_finite", staticmethod(lambda g: False))
    calls = []
    real = base.finite_flags
    monkeypatch.setattr(base, "finite_flags", lambda ts: calls.append(1) or real(ts))
    ps, grads = _problem()
    opt = SOAP(ps, lr=1e-2, precondition_frequency=2)
    for i, gs in enumerate(grads):
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        before = len(calls)
        if i % 2:
            opt.grads_checked_finite()
        opt.step()
        assert (len(calls) > before) == (i % 2 == 0), (i, calls)
    assert opt.skipped_updates is None or int(opt.skipped_updates) == 0


def test_the_trainer_tells_the_optimizer(monkeypatch, tmp_path, cache_dir):
    """The trainer's step calls ``grads_checked_finite`` after its finite norm."""
    import soap._base as base
    from tests.helpers import run_inprocess

    told = []
    real = base.BucketedOptimizer.grads_checked_finite
    monkeypatch.setattr(
        base.BucketedOptimizer, "grads_checked_finite", lambda self: told.append(1) or real(self)
    )
    code = run_inprocess(
        ["optimizer=soap", "train.max_steps=3", "train.eval_every=3", f"run_dir={tmp_path / 'r'}"],
        cache_dir,
    )
    assert code == 0 and len(told) == 3
