"""Optimizer step time and state memory, side by side in one run (a benchmark, not a test).

``python -m scripts.bench_optimizer [--shapes cpu|360m|all] [--device cpu|cuda] [--steps N]``

Builds GPT-shaped parameter sets with fixed random gradients and times ``optimizer.step()``
alone (device synchronised; the first step, which builds SOAP's bases with ``eigh``, is
reported separately; the timed steps include the amortised refreshes at
``precondition_frequency``). Prints ms/step and optimizer-state bytes as ratios to AdamW.

Shape sets:
* ``cpu``: d=256, 4 layers, SwiGLU d_ff=1024, vocabulary 32100 (embedding and head get the
  identity on their vocabulary side, as in the paper);
* ``360m``: the 360m preset's layer shapes (d=1280, d_ff=3456) with 2 layers and vocabulary
  32100 (use a GPU; the 3456-sized eigendecompositions are slow on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from soap import SOAP, Shampoo, optimizer_state_bytes


def gpt_shapes(d: int, d_ff: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        shapes += [(f"layers.{i}.{n}", (d, d)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        shapes += [(f"layers.{i}.{n}", (d_ff, d)) for n in ("gate_proj", "up_proj")]
        shapes += [(f"layers.{i}.down_proj", (d, d_ff))]
        shapes += [(f"layers.{i}.{n}", (d,)) for n in ("attn_norm", "mlp_norm", "q_norm", "k_norm")]
    shapes += [("norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    return shapes


SHAPE_SETS = {
    "cpu": dict(d=256, d_ff=1024, layers=4, vocab=32100),
    "360m": dict(d=1280, d_ff=3456, layers=2, vocab=32100),
}


def variants(freq: int) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    common = dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01)
    return {
        "adamw": lambda ps: torch.optim.AdamW(ps, eps=1e-8, **common, foreach=True),
        "shampoo": lambda ps: Shampoo(
            ps, precondition_frequency=freq, start_preconditioning_step=1, **common
        ),
        "soap": lambda ps: SOAP(ps, precondition_frequency=freq, **common),
        "soap (plain per-tensor)": lambda ps: SOAP(
            ps, precondition_frequency=freq, foreach=False, **common
        ),
        "soap one-sided": lambda ps: SOAP(
            ps, precondition_frequency=freq, one_sided=True, **common
        ),
        "soap factorized": lambda ps: SOAP(
            ps, precondition_frequency=freq, factorized=True, **common
        ),
        "soap one-sided+factorized": lambda ps: SOAP(
            ps, precondition_frequency=freq, one_sided=True, factorized=True, **common
        ),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    shape_set: str, device: torch.device, steps: int, freq: int, only: list[str] | None = None
) -> list[dict]:
    spec = SHAPE_SETS[shape_set]
    shapes = gpt_shapes(spec["d"], spec["d_ff"], spec["layers"], spec["vocab"])
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(*s, generator=gen) * 0.02 for _, s in shapes]
    grads = [torch.randn(*s, generator=gen).to(device) for _, s in shapes]
    rows = []
    for name, make in variants(freq).items():
        if only and name not in only:
            continue
        params = [x.clone().to(device).requires_grad_() for x in init]
        opt = make(params)
        times = []
        for _ in range(steps + 1):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            _sync(device)
            t = time.perf_counter()
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "optimizer": name,
                "first_ms": 1e3 * times[0],
                "ms": 1e3 * statistics.mean(times[1:]),
                "state_bytes": optimizer_state_bytes(opt),
            }
        )
        del opt, params
    base = next(r for r in rows if r["optimizer"] == "adamw")
    for r in rows:
        r["ms_ratio"] = r["ms"] / base["ms"]
        r["state_ratio"] = r["state_bytes"] / base["state_bytes"]
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| optimizer | ms/step | vs AdamW | first step ms | state MiB | state vs AdamW |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['optimizer']} | {r['ms']:.1f} | {r['ms_ratio']:.2f}x | {r['first_ms']:.0f} | {r['state_bytes'] / 2**20:.1f} | {r['state_ratio']:.2f}x |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=[*SHAPE_SETS, "all"], default="cpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after the first)")
    ap.add_argument("--freq", type=int, default=10, help="precondition_frequency")
    ap.add_argument(
        "--only", nargs="*", default=None, help="subset of variants (adamw is always run)"
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 for every optimizer
    only = None if not args.only else sorted({"adamw", *args.only})
    sets = list(SHAPE_SETS) if args.shapes == "all" else [args.shapes]
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), torch {torch.__version__}, {args.steps} timed steps, precondition_frequency {args.freq}"
    )
    for s in sets:
        spec = SHAPE_SETS[s]
        n = sum(
            torch.Size(sh).numel()
            for _, sh in gpt_shapes(spec["d"], spec["d_ff"], spec["layers"], spec["vocab"])
        )
        print(f"\nshapes {s}: {spec} ({n / 1e6:.1f}M parameters)")
        print(table(bench(s, device, args.steps, args.freq, only)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
