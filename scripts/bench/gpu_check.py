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
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# Dense bf16 peak TFLOP/s (vendor data sheets, SXM parts, no sparsity).
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "GH200": 989.0}


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    key = next((k for k in sorted(PEAK_BF16, key=len, reverse=True) if k in name), None)
    return name, PEAK_BF16.get(key) if key else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_tests(smoke: bool) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    tail = [x for x in r.stdout.strip().splitlines() if x.strip()][-1:] or ["(no output)"]
    return f"pytest -m gpu: exit {r.returncode}: {tail[0]}"


def optimizer_steps(device: torch.device, smoke: bool) -> str:
    from scripts.bench import optimizer as bo

    args = argparse.Namespace(
        freq=10, max_dim=10000, warmup=1 if smoke else 3, steps=2 if smoke else 20,
        reference=None, no_peers=smoke, only=["soap", "shampoo"],
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, seconds (CPU check)")
    ap.add_argument("--out", default=None, help="default: results/bench/gpu_check_<gpu>.txt")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device here: run on a GPU node, or --device cpu --smoke",
            file=sys.stderr,
        )
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    name, _ = peak_tflops(device)
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "cpu"
    out = Path(args.out or REPO / "results" / "bench" / f"gpu_check_{slug}.txt")
    cmd = "python -m scripts.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [
        f"# {cmd.strip()}\n# {date.today()} | {name} | torch {torch.__version__}"
        + (" | SMOKE (tiny shapes: a check of the code, not a measurement)" if args.smoke else "")
    ]
    t0 = time.time()
    for title, fn in (
        ("tests", gpu_tests),
        ("optimizer step", optimizer_steps),
        ("training step", train_steps),
        ("loss memory", loss_bench),
    ):
        print(f"gpu-check: {title} ...", flush=True)
        try:
            parts.append(
                f"## {title}\n{fn(device, args.smoke) if fn is not gpu_tests else fn(args.smoke)}"
            )
        except Exception as e:  # report and go on: one broken part must not hide the others
            parts.append(f"## {title}\nFAILED: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    parts.append(f"(gpu-check took {time.time() - t0:.0f} s)")
    text = "\n\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return 1 if "FAILED:" in text else 0


if __name__ == "__main__":
    raise SystemExit(main())
