"""Optimizer step time and state memory, side by side in one run, against AdamW, against peer
SOAP implementations and against the FLOP floor (a benchmark, not a test).

``python -m scripts.bench.optimizer [--shapes cpu|360m|all] [--device cpu|cuda] [--steps N]
[--freq F] [--reference PATH/TO/nikhilvyas/SOAP/soap.py] [--no-peers]``
``python -m scripts.bench.optimizer --procs 1 2`` (the distributed mode, see
:mod:`scripts.bench.distributed`).

GPT-shaped parameter sets with fixed random gradients; ``optimizer.step()`` alone, device
synchronised. The first ``--warmup`` steps (SOAP's first step builds its bases with ``eigh``;
compiled peers compile) are reported separately; the ``--steps`` timed steps include the
refreshes at ``--freq`` (amortised in "ms/step"), and their median is a step without a
refresh.

The FLOP floor: the matrix products a SOAP step cannot avoid (per preconditioned dimension
``d`` of a tensor with ``N`` entries: rotate in, rotate out, factor update, ``2 N d`` each;
``6mn(m+n)`` for an ``m x n`` matrix preconditioned on both sides; vocabulary sides use the
identity), at the matmul rate this machine reaches on those very products (measured in the
same run). "x floor" divides the median step by that floor; "x floor, amortised" divides the
mean step by the floor plus the refresh's products (``L Q``, Householder QR, the first
moment's change of basis) per ``--freq`` steps at the same rate. QR and ``eigh`` run far
below matmul speed, so the second ratio is the harder one. Shampoo's floor counts its factor
updates and its preconditioning (``4 N d`` per dimension).

Peers, timed in the same run when installed (``pip install -e '.[bench]'``): heavyball's
``SOAP`` and pytorch-optimizer's ``SOAP``, configured like ours (same betas, frequency,
``max_precond_dim``, no merging, no schedules); the public reference (github.com/nikhilvyas/
SOAP, one file, not on PyPI) when ``--reference`` points at its ``soap.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from scripts.bench.shapes import COMMON, SHAPE_SETS, Factory, gpt_shapes, ours
from soap import SOAP, optimizer_state_bytes
from soap.layout import Layout


def peers(freq: int, max_dim: int, reference: str | None) -> dict[str, Factory | str]:
    """Peer SOAPs configured like ours, or the reason one is missing."""
    out: dict[str, Factory | str] = {}
    try:
        import heavyball

        out["heavyball SOAP"] = lambda ps: heavyball.SOAP(
            ps,
            precondition_frequency=freq,
            max_precond_dim=max_dim,
            merge_dims=False,
            shampoo_beta=COMMON["betas"][1],
            use_precond_schedule=False,
            **COMMON,
        )
    except ImportError:
        out["heavyball SOAP"] = "not installed (pip install -e '.[bench]')"
    try:
        import pytorch_optimizer

        out["pytorch-optimizer SOAP"] = lambda ps: pytorch_optimizer.SOAP(
            ps, precondition_frequency=freq, max_precondition_dim=max_dim, **COMMON
        )
    except ImportError:
        out["pytorch-optimizer SOAP"] = "not installed (pip install -e '.[bench]')"
    if reference and Path(reference).is_file():
        spec = importlib.util.spec_from_file_location("reference_soap", reference)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        out["reference SOAP"] = lambda ps: mod.SOAP(
            ps, precondition_frequency=freq, max_precond_dim=max_dim, **COMMON
        )
    else:
        out["reference SOAP"] = "not given (--reference path/to/github.com/nikhilvyas/SOAP/soap.py)"
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the FLOP floor ----------------------------------------------------------------------
def _layouts(shapes: list[tuple[int, ...]], **kw) -> list[Layout]:
    opt = SOAP([torch.zeros(1)], **kw)
    group = opt.param_groups[0]
    return [opt._layout(torch.empty(s, device="meta"), group) for s in shapes]


def floor_flops(shapes: list[tuple[int, ...]], kind: str, freq: int, max_dim: int) -> tuple:
    """(refresh-free FLOPs per step, refresh FLOPs) of ``kind``, or None without a floor."""
    if kind == "shampoo":
        lay = _layouts(shapes, max_precond_dim=max_dim, precondition_1d=True)
        step = sum(4 * x.matmul_flops() // 6 for x in lay)
        refresh = sum(
            11 * d**3 for x in lay for d, h in zip(x.shape, x.preconditioned, strict=True) if h
        )
        return step, refresh
    if "soap" not in kind.lower():
        return None
    kw: dict = {"max_precond_dim": max_dim}
    if "one-sided" in kind:
        kw["one_sided"] = True
    lay = _layouts(shapes, **kw)
    return sum(x.matmul_flops() for x in lay), sum(x.refresh_flops() for x in lay)


def matmul_rate(shapes: list[tuple[int, ...]], max_dim: int, device: torch.device) -> float:
    """FLOP/s of the refresh-free SOAP products of this shape set, timed here."""
    gen = torch.Generator().manual_seed(1)
    work = []
    for lay in _layouts(shapes, max_precond_dim=max_dim):
        if len(lay.shape) != 2 or not lay.any_preconditioned:
            continue
        g = torch.randn(*lay.shape, generator=gen).to(device)
        qs = [
            torch.randn(d, d, generator=gen).to(device) if h else None
            for d, h in zip(lay.shape, lay.preconditioned, strict=True)
        ]
        work.append((g, qs, lay.matmul_flops()))

    def run() -> None:
        for g, (ql, qr), _ in work:
            for _ in range(2):  # rotate in, rotate out
                x = ql.mT @ g if ql is not None else g
                x = x @ qr if qr is not None else x
            if ql is not None:
                _ = g @ g.mT
            if qr is not None:
                _ = g.mT @ g

    best = float("inf")
    for _ in range(4):  # the best of several passes: the rate the hardware can reach
        _sync(device)
        t = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return sum(w[2] for w in work) / best


# ---- timing -------------------------------------------------------------------------------
def time_steps(make: Factory, init, grads, device, warmup: int, steps: int) -> dict:
    params = [x.clone().to(device).requires_grad_() for x in init]
    opt = make(params)
    times = []
    for _ in range(warmup + steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        _sync(device)
        t = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    timed = times[warmup:]
    return {
        "first_ms": 1e3 * sum(times[:warmup]),
        "ms": 1e3 * statistics.mean(timed),
        "median_ms": 1e3 * statistics.median(timed),
        "state_bytes": optimizer_state_bytes(opt),
    }


def bench(shape_set: str, device: torch.device, args: argparse.Namespace) -> str:
    spec = SHAPE_SETS[shape_set]
    named = gpt_shapes(spec["d"], spec["d_ff"], spec["layers"], spec["vocab"])
    shapes = [s for _, s in named]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(*s, generator=gen).to(device) for s in shapes]
    cands: dict[str, Factory | str] = dict(ours(args.freq, args.max_dim))
    if not args.no_peers:
        cands.update(peers(args.freq, args.max_dim, args.reference))
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only or k == "adamw"}
    rate = matmul_rate(shapes, args.max_dim, device)
    rows, missing = [], []
    for name, make in cands.items():
        if isinstance(make, str):
            missing.append(f"{name}: {make}")
            continue
        r = time_steps(make, init, grads, device, args.warmup, args.steps)
        kind = "soap" if "SOAP" in name else name
        fl = floor_flops(shapes, kind, args.freq, args.max_dim)
        if fl is not None:
            r["floor_ms"] = 1e3 * fl[0] / rate
            r["floor_amortised_ms"] = 1e3 * (fl[0] + fl[1] / args.freq) / rate
        rows.append((name, r))
        print(f"  timed {name}: {r['ms']:.1f} ms/step", flush=True)
    base = dict(rows)["adamw"]
    lines = [
        f"\nshapes {shape_set}: {spec} ({sum(torch.Size(s).numel() for s in shapes) / 1e6:.1f}M "
        f"parameters); matmul rate on SOAP's products here: {rate / 1e9:.0f} GFLOP/s",
        "| optimizer | ms/step | median ms | vs AdamW | warm-up ms | state MiB | state vs AdamW"
        " | floor ms | x floor | floor ms, amortised | x floor, amortised |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        fl = (
            f"{r['floor_ms']:.1f} | {r['median_ms'] / r['floor_ms']:.2f}x | "
            f"{r['floor_amortised_ms']:.1f} | {r['ms'] / r['floor_amortised_ms']:.2f}x"
            if "floor_ms" in r
            else "- | - | - | -"
        )
        lines.append(
            f"| {name} | {r['ms']:.1f} | {r['median_ms']:.1f} | {r['ms'] / base['ms']:.2f}x | "
            f"{r['first_ms']:.0f} | {r['state_bytes'] / 2**20:.1f} | "
            f"{r['state_bytes'] / base['state_bytes']:.2f}x | {fl} |"
        )
    mine = dict(rows).get("soap")
    others = [(n, r) for n, r in rows if "SOAP" in n]
    if mine and others:
        lines.append(
            "\nsoap vs peers (mean ms/step, lower is better): "
            + ", ".join(f"{n} {mine['ms'] / r['ms']:.2f}x" for n, r in others)
        )
    lines += [f"(not timed: {m})" for m in missing]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=[*SHAPE_SETS, "all"], default="cpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--freq", type=int, default=10, help="precondition_frequency")
    ap.add_argument("--max-dim", type=int, default=10000, help="max_precond_dim")
    ap.add_argument("--reference", default=None, help="path to the public reference soap.py")
    ap.add_argument("--no-peers", action="store_true", help="time only this package")
    ap.add_argument("--only", nargs="*", default=None, help="subset (adamw is always run)")
    ap.add_argument(
        "--procs", nargs="*", type=int, default=None, help="distributed mode: process counts"
    )
    args = ap.parse_args(argv)
    if args.procs:
        from scripts.bench.distributed import main as dist_main

        return dist_main(args)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 for every optimizer
    sets = list(SHAPE_SETS) if args.shapes == "all" else [args.shapes]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"device: {device} ({where}), torch {torch.__version__}, {args.warmup} warm-up + "
        f"{args.steps} timed steps, precondition_frequency {args.freq}, "
        f"max_precond_dim {args.max_dim}",
        flush=True,
    )
    for s in sets:
        print(bench(s, device, args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
