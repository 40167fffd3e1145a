"""Peak memory and time of one forward+backward, the loss computed from full logits (the
straightforward way, as before) against the chunked fused loss (:mod:`models.loss`), side by
side in one run (a benchmark, not a test).

``python -m scripts.bench.loss [--preset tiny] [--vocab 32100] [--seq-len 1024] [--micro 4 8]``

Each measurement runs in a fresh process: peak resident memory (VmHWM) on CPU, the CUDA
allocator's peak on a GPU (bf16 autocast). The paper's vocabulary (T5, 32100) makes the
logits ``micro x seq_len x 32100`` - 1 GiB in fp32 for 8 x 1024 tokens, times the copies the
softmax and its gradient keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def measure(preset: str, vocab: int, seq_len: int, micro: int, fused: bool, device: str) -> dict:
    """Run in a fresh process."""
    import torch

    from models import build_model
    from models.loss import CausalLMWithLoss, lm_loss_from_logits

    torch.manual_seed(0)
    lm = build_model(preset, vocab_size=vocab, max_seq_len=seq_len).to(device)
    model = CausalLMWithLoss(lm, z_loss=1e-4)
    ids = torch.randint(0, vocab, (micro, seq_len), device=device)
    ctx = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> float:
        with ctx:
            if fused:
                _, loss = model(ids)
            else:
                _, loss = lm_loss_from_logits(lm(input_ids=ids).logits, ids, 1e-4)
        loss.backward()
        lm.zero_grad(set_to_none=False)
        return float(loss)

    step()  # warm-up (allocations of the gradients)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    t = time.perf_counter()
    loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        with open("/proc/self/status") as f:
            peak = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM"))
    return {"peak": peak, "seconds": time.perf_counter() - t, "loss": loss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=32100)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--device", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"loss step memory: model {args.preset}, vocabulary {args.vocab}, seq_len {args.seq_len}, "
        f"{device} ({'bf16 autocast' if device == 'cuda' else 'fp32'}), torch {torch.__version__}"
    )
    print("| micro-batch | loss | peak MiB | vs full logits | seconds | loss value |")
    print("|---|---|---|---|---|---|")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for micro in args.micro:
        rows = {}
        for fused in (False, True):
            spec = dict(
                preset=args.preset,
                vocab=args.vocab,
                seq_len=args.seq_len,
                micro=micro,
                fused=fused,
                device=device,
            )
            r = subprocess.run(
                [sys.executable, "-m", "scripts.bench.loss", "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode:
                print(
                    f"| {micro} | {'chunked' if fused else 'full logits'} | failed: {r.stderr.strip().splitlines()[-1][:80]} | | | |"
                )
                continue
            rows[fused] = json.loads(r.stdout.strip().splitlines()[-1])
        for fused, res in rows.items():
            ratio = res["peak"] / rows[False]["peak"] if False in rows else float("nan")
            print(
                f"| {micro} | {'chunked (fused)' if fused else 'full logits'} | {res['peak'] / 2**20:,.0f} | "
                f"{ratio:.2f}x | {res['seconds']:.2f} | {res['loss']:.4f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
