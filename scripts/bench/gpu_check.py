"""GPU acceptance in one command (``make gpu-check``): everything GPU-specific, written to
``results/bench/gpu_check_<gpu>.txt``.

1. ``pytest -m gpu`` (CUDA vs CPU numerics, bf16 parameters, the trainer in bf16);
2. the optimizer step of AdamW, SOAP and Shampoo at 360m shapes against the FLOP floor and
   the peers that are installed (:mod:`scripts.bench.optimizer`);
3. a 360m training step per optimizer (bf16 autocast, compiled decoder layers, the chunked
   loss) at the small-batch preset's micro-batch: forward+backward and optimizer time,
   tokens/s and MFU, SOAP's and Shampoo's full-step overhead over AdamW, peak memory;
4. the loss benchmark (:mod:`scripts.bench.loss`).

MFU = model FLOPs / time / peak, with model FLOPs per token ``6 N + 12 L d T`` (N
non-embedding parameters plus the output projection, L layers, d model width, T sequence
length: the attention scores and values, forward and backward, as in the PaLM paper's
appendix B) against the GPU's dense bf16 peak from :data:`PEAK_BF16` (none: MFU not given).

``--device cpu --smoke`` runs the same code on tiny shapes in seconds (``make test`` does),
so that on the first GPU it only has to be run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# Dense bf16 peak TFLOP/s (vendor data sheets, no sparsity), per (part, form factor). The
# form factor is read from the device name: "PCIe" or "NVL" where the name says so, else SXM
# (torch names an H100 SXM "NVIDIA H100 80GB HBM3", a PCIe card "NVIDIA H100 PCIe").
PEAK_BF16 = {
    ("H100", "SXM"): 989.0, ("H100", "PCIE"): 756.0, ("H100", "NVL"): 835.0,
    ("H200", "SXM"): 989.0, ("H200", "NVL"): 835.0,
    ("H800", "SXM"): 989.0, ("H800", "PCIE"): 756.0,
    ("GH200", "SXM"): 989.0,
    ("A100", "SXM"): 312.0, ("A100", "PCIE"): 312.0,
}  # fmt: skip


def peak_for_name(name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``name``, or None for a part or form factor not
    in :data:`PEAK_BF16` (MFU is then not given rather than guessed)."""
    words = name.upper().replace("-", " ").split()
    form = "PCIE" if "PCIE" in words else "NVL" if "NVL" in words else "SXM"
    if any(w.startswith("SXM") for w in words):
        form = "SXM"
    part = next((w for w in words if (w, "SXM") in PEAK_BF16 or (w, form) in PEAK_BF16), None)
    return PEAK_BF16.get((part, form)) if part else None


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, peak_for_name(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CheckFailed(RuntimeError):
    """A part of the check ran and failed (its report says how)."""


def gpu_tests(smoke: bool) -> str:
    """``pytest -m gpu``; any exit but 0 fails the check (failures, errors, and no test run:
    on a GPU node every one of them should run)."""
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return pytest_summary(r.returncode, r.stdout)


def pytest_summary(code: int, stdout: str) -> str:
    """The report line of a ``pytest`` run; raises :class:`CheckFailed` unless it passed."""
    lines = [x for x in stdout.strip().splitlines() if x.strip()]
    tail = lines[-1] if lines else "(no output)"
    failed = [x for x in lines if x.startswith(("FAILED ", "ERROR "))]
    text = "\n".join([f"pytest -m gpu: exit {code}: {tail}", *failed])
    if code != 0:
        raise CheckFailed(text)
    return text


def optimizer_steps(device: torch.device, smoke: bool) -> str:
    from scripts.bench import optimizer as bo

    args = argparse.Namespace(
        freq=10, max_dim=10000, warmup=1 if smoke else 3, steps=2 if smoke else 20,
        reference=None, no_peers=smoke,
        only=["soap", "shampoo", "heavyball SOAP", "pytorch-optimizer SOAP"],
    )  # fmt: skip
    if smoke:
        bo.SHAPE_SETS.setdefault("smoke", dict(d=32, d_ff=64, layers=1, vocab=300))
    with contextlib.redirect_stdout(io.StringIO()):
        return bo.bench("smoke" if smoke else "360m", device, args)


def train_steps(device: torch.device, smoke: bool) -> str:
    """One model, each optimizer in turn: time forward+backward and the optimizer step."""
    from models import build_model
    from models.loss import CausalLMWithLoss
    from models.presets import get_preset
    from soap import build_optimizer

    preset, vocab, seq, micro = ("tiny", 512, 64, 2) if smoke else ("360m", 32100, 1024, 16)
    steps, warm = (2, 1) if smoke else (10, 3)
    p = get_preset(preset)
    n = p.non_embedding_params() + vocab * p.d_model  # + the output projection
    flops_per_token = 6 * n + 12 * p.n_layers * p.d_model * seq
    name, peak = peak_tflops(device)
    tokens = micro * seq
    rows, base = [], None
    for opt_name in ("adamw", "soap", "shampoo"):
        torch.manual_seed(0)
        lm = build_model(preset, vocab_size=vocab, max_seq_len=seq).to(device)
        model = CausalLMWithLoss(lm, z_loss=1e-4)
        if device.type == "cuda" and not smoke:
            for layer in model.decoder_layers:
                layer.compile()
        opt = build_optimizer(model, opt_name, lr=3e-3)
        ids = torch.randint(0, vocab, (micro, seq), device=device)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fb = st = 0.0
        for i in range(warm + steps):
            _sync(device)
            t0 = time.perf_counter()
            with ctx:
                _, loss = model(ids)
            loss.backward()
            _sync(device)
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warm:
                fb, st = fb + t1 - t0, st + time.perf_counter() - t1
        fb, st = fb / steps, st / steps
        mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        total = fb + st
        mfu = flops_per_token * tokens / total / (peak * 1e12) if peak else None
        if base is None:
            base = total
        rows.append((opt_name, fb, st, tokens / total, mfu, total / base - 1, mem))
        del model, lm, opt
    lines = [
        f"training step: {preset} ({n / 1e6:.1f}M parameters with the output projection), "
        f"{micro} x {seq} tokens, {'bf16 autocast, compiled layers' if device.type == 'cuda' and not smoke else 'fp32, eager'}, "
        f"chunked loss; {steps} timed steps after {warm}; {name}, dense bf16 peak "
        f"{peak if peak else 'unknown'} TFLOP/s; model FLOPs per token 6N + 12 L d T = "
        f"{flops_per_token / 1e9:.2f} GFLOP",
        "| optimizer | fwd+bwd s | optimizer s | tokens/s | MFU | full step vs AdamW | peak memory GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for o, fb, st, tps, mfu, over, mem in rows:
        lines.append(
            f"| {o} | {fb:.4f} | {st:.4f} | {tps:.0f} | {f'{100 * mfu:.1f}%' if mfu else '-'} | "
            f"{100 * over:+.1f}% | {f'{mem / 2**30:.2f}' if mem else '-'} |"
        )
    return "\n".join(lines)


def loss_bench(device: torch.device, smoke: bool) -> str:
    from scripts.bench import loss as bench_loss

    argv = ["--device", device.type]
    argv += (
        ["--preset", "tiny", "--vocab", "512", "--seq-len", "64", "--micro", "2"] if smoke else []
    )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench_loss.main(argv)
    return buf.getvalue().strip()


def main(
    argv: list[str] | None = None, notes: list[tuple[str, Callable[[], str]]] | None = None
) -> int:
    """``notes``: sections that need no device, printed last (the command,
    ``scripts/gpu_check.py``, adds which claims one GPU could test first)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, seconds (CPU check)")
    ap.add_argument("--out", default=None, help="default: results/bench/gpu_check_<gpu>.txt")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(no_cuda_reason(), file=sys.stderr)
        return 2
    if device.type == "cuda":  # full fp32 for every optimizer's matmuls
        torch.backends.cuda.matmul.allow_tf32 = False  # a write: safe with either TF32 API
    name, _ = peak_tflops(device)
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "cpu"
    out = Path(args.out or REPO / "results" / "bench" / f"gpu_check_{slug}.txt")
    cmd = "python -m scripts.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [
        f"# {cmd.strip()}\n# {date.today()} | {name} | torch {torch.__version__}"
        + (" | SMOKE (tiny shapes: a check of the code, not a measurement)" if args.smoke else "")
    ]
    t0 = time.time()
    status: list[tuple[str, str]] = []
    for title, fn in (
        ("tests", gpu_tests),
        ("optimizer step", optimizer_steps),
        ("training step", train_steps),
        ("loss memory", loss_bench),
        *((t, lambda device, smoke, f=f: f()) for t, f in notes or []),
    ):
        print(f"gpu-check: {title} ...", flush=True)
        try:
            parts.append(
                f"## {title}\n{fn(device, args.smoke) if fn is not gpu_tests else fn(args.smoke)}"
            )
            status.append((title, "passed"))
        except Exception as e:  # report and go on: one broken part must not hide the others
            first = str(e).splitlines()[0][:300] if str(e) else ""
            rest = "\n".join(str(e).splitlines()[1:]) if isinstance(e, CheckFailed) else ""
            parts.append(f"## {title}\nFAILED: {type(e).__name__}: {first}\n{rest}".rstrip())
            status.append((title, "FAILED"))
    parts.insert(1, "checks: " + ", ".join(f"{t} {s}" for t, s in status))
    parts.append(f"(gpu-check took {time.time() - t0:.0f} s)")
    text = "\n\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    bad = [t for t, s in status if s != "passed"]
    if bad:
        print(f"gpu-check: FAILED: {', '.join(bad)} (see {out})", file=sys.stderr)
    return 1 if bad else 0


def no_cuda_reason() -> str:
    """One line: why there is no CUDA device, and the fix."""
    if torch.version.cuda is None:
        return (
            f"error: torch {torch.__version__} is a CPU-only build: install a CUDA build "
            "(rm -rf .venv && TORCH_SPEC=torch make install), or run --device cpu --smoke"
        )
    return (
        f"error: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
        "(driver, CUDA_VISIBLE_DEVICES?): run on a GPU node, or --device cpu --smoke"
    )


if __name__ == "__main__":
    raise SystemExit(main())
