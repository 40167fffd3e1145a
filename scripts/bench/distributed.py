"""The distributed optimizer step, side by side for 1, 2, ... processes (a benchmark, not a
test): ``python -m scripts.bench.optimizer --procs 1 2 [--only soap shampoo muon]``.

Every process builds the same GPT-shaped parameters and gradients (as after DDP's gradient
all-reduce), steps the optimizer in its distributed mode (owner computes, one all-gather) and
reports, per rank: the step time (the slowest rank's, device synchronised, processes started
together by a barrier), the optimizer state it holds and the bytes it sent and received.
``--procs 1`` runs the same code in one process. On CPU (gloo) each process gets one thread
(``OMP_NUM_THREADS=1``), so N processes use N cores against one core for one process; with
``--device cuda`` (NCCL) each process drives the GPU of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from scripts.bench.shapes import SHAPE_SETS, gpt_shapes, ours

PORT = 29651


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.set_num_threads(1)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    spec = SHAPE_SETS[args.shapes]
    shapes = [s for _, s in gpt_shapes(spec["d"], spec["d_ff"], spec["layers"], spec["vocab"])]
    gen = torch.Generator().manual_seed(0)
    init = [(torch.randn(*s, generator=gen) * 0.02).to(device) for s in shapes]
    grads = [torch.randn(*s, generator=gen).to(device) for s in shapes]
    makers = ours(args.freq, args.max_dim)
    makers["muon"] = _muon
    results = {}
    for name in args.only:
        params = [x.clone().requires_grad_() for x in init]
        opt = makers[name](params)
        times = []
        for _ in range(args.warmup + args.steps):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            sync()
            if dist.is_initialized():
                dist.barrier()
            t = time.perf_counter()
            opt.step()
            sync()
            times.append(time.perf_counter() - t)
        from soap import optimizer_state_bytes

        comm = getattr(opt, "comm_bytes_per_step", 0)
        results[name] = {
            "ms": 1e3 * statistics.mean(times[args.warmup :]),
            "state_bytes": optimizer_state_bytes(opt),
            "comm_bytes": comm,
            "gather_ms": _gather_alone_ms(comm, device, sync) if dist.is_initialized() else 0.0,
        }
    per_rank = [results]
    if dist.is_initialized():
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, results)
        dist.destroy_process_group()
    if rank == 0:
        Path(args.out).write_text(json.dumps(per_rank))


def _gather_alone_ms(comm_bytes: int, device: torch.device, sync: Any) -> float:
    """Median time of one flat fp32 all-gather moving the step's bytes, with nothing else
    running: the communication's own cost, which overlap can hide only where it does not
    compete with the computation for the same cores."""
    import torch.distributed as dist

    from soap.distributed import all_gather_flat  # the optimizer's own collective

    world = dist.get_world_size()
    n = max(1, comm_bytes // (2 * 4 * (world - 1)))  # elements each rank contributes
    x = torch.zeros(n, device=device)
    out = torch.empty(world * n, device=device)
    times = []
    for _ in range(7):
        sync()
        dist.barrier()
        t = time.perf_counter()
        all_gather_flat(out, x, dist.group.WORLD)
        sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times[2:])


def _muon(ps):
    from soap import MuonAdamW

    named = [
        (f"layers.{i}.w" if p.ndim == 2 and p.shape[0] < 30000 else f"embed.{i}", p)
        for i, p in enumerate(ps)
    ]
    return MuonAdamW(named, lr=0.02)


def launch(n: int, args: argparse.Namespace, out: Path) -> list[dict]:
    common = [
        "--shapes",
        args.shapes,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--freq",
        str(args.freq),
        "--max-dim",
        str(args.max_dim),
        "--device",
        args.device,
        "--out",
        str(out),
        "--only",
        *args.only,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    if n == 1:
        cmd = [sys.executable, "-m", "scripts.bench.distributed", *common]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={n}",
            f"--master_port={PORT + n}",
            "-m",
            "scripts.bench.distributed",
            *common,
        ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: the {n}-process run failed:\n{r.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(args: argparse.Namespace) -> int:
    only = [
        o
        for o in (args.only or ["soap", "shampoo", "muon"])
        if o in ("soap", "shampoo", "muon", "adamw")
    ]
    args.only = only
    procs = sorted(set(args.procs) | {1})
    print(
        f"distributed optimizer step, shapes {args.shapes} {SHAPE_SETS[args.shapes]}, one thread "
        f"per process, {args.warmup} warm-up + {args.steps} timed steps, precondition_frequency "
        f"{args.freq}; device {args.device}; torch {torch.__version__}; processes {procs}",
        flush=True,
    )
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in procs:
            res[n] = launch(n, args, Path(tmp) / f"p{n}.json")
            print(f"  {n} process(es) done", flush=True)
    print(
        "| optimizer | processes | ms/step (slowest rank) | vs 1 process | state MiB per rank "
        "(largest) | vs 1 process | MB sent+received per rank per step | that all-gather "
        "alone, ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in only:
        base = res[1][0][name]
        for n in procs:
            ranks = [r[name] for r in res[n]]
            ms = max(r["ms"] for r in ranks)
            state = max(r["state_bytes"] for r in ranks)
            comm = max(r["comm_bytes"] for r in ranks)
            gather = max(r["gather_ms"] for r in ranks)
            print(
                f"| {name} | {n} | {ms:.1f} | {ms / base['ms']:.2f}x | {state / 2**20:.1f} | "
                f"{state / base['state_bytes']:.2f}x | {comm / 1e6:.1f} | "
                f"{gather:.1f} |"
            )
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--freq", type=int, default=10)
    ap.add_argument("--max-dim", type=int, default=10000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=["soap"])
    worker(ap.parse_args())
