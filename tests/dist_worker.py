"""Run under ``torchrun`` by tests/test_distributed.py (or alone, world size 1): step every
optimizer case on the same parameters and gradients, and write the final parameters (and
the bytes of state this rank holds) to ``<out>/<case>.rank<r>.pt``.

Modes: ``ddp`` (plain parameters, identical gradients on every rank, as after DDP's
all-reduce) and ``fsdp`` (``DTensor`` parameters and gradients sharded ``Shard(0)``, as
FSDP2's ``fully_shard`` leaves them after its reduce-scatter)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from soap import SOAP, Muon, Shampoo, optimizer_state_bytes
from tests.numerics import perturbed_grads, problem  # PYTHONPATH: the repo (tests/helpers.py)

SHAPES = {
    # vocabulary-like (identity on 300 > 64), stacked squares, rectangles, 1-D, 3-D. Every
    # factor is full rank from its first gradient (the rectangles' long sides are above 64,
    # so the identity), which keeps the comparison meaningful on any CPU (tests/numerics.py).
    "mix": [(300, 16), (16, 16), (16, 16), (16, 16), (96, 16), (16, 96), (16,), (4, 4, 16)],
    # Shampoo: row blocks of 32 x 32 (a 60 x 16 block of 300 x 16 is rank-deficient, and
    # epsilon=1e-12 makes its root chaotic); a 1-D tensor above 64 (grafting only).
    "shampoo": [(128, 32), (16, 16), (16, 16), (16, 16), (16, 96), (80,), (4, 4, 16)],
    "matrices": [(300, 16), (16, 16), (16, 16), (32, 16), (16, 32), (24, 24)],
}
CASES = {
    "soap": (lambda ps: SOAP(ps, lr=1e-2, precondition_frequency=3, max_precond_dim=64), "mix"),
    "soap_merge": (
        lambda ps: SOAP(ps, lr=1e-2, precondition_frequency=3, max_precond_dim=64, merge_dims=True),
        "mix",
    ),
    "soap_variants": (
        lambda ps: SOAP(
            ps,
            lr=1e-2,
            precondition_frequency=3,
            max_precond_dim=64,
            one_sided=True,
            factorized=True,
        ),
        "mix",
    ),
    "shampoo": (
        lambda ps: Shampoo(
            ps,
            lr=1e-2,
            precondition_frequency=3,
            start_preconditioning_step=2,
            max_preconditioner_dim=64,
            block_size=32,
        ),
        "shampoo",
    ),
    "muon": (lambda ps: Muon(ps, lr=2e-2, adjust_lr_fn="match_rms_adamw"), "matrices"),
}
STEPS, NAN_AT = 10, 6  # a NaN gradient (one parameter) at step 6: skipped by every rank


# ---- NCCL's rules on gloo ------------------------------------------------------------------
# NCCL takes only tensors on the process's GPU; gloo takes CPU tensors too, so a collective fed
# a tensor built without ``device=`` passes every CPU test and crashes the first GPU job. Here
# every step runs with the default device set to ``meta`` (a tensor built without a device
# lands there, as it would land on the CPU beside CUDA parameters), and every collective
# checks that its tensors are on the parameters' device.
COLLECTIVES = ("all_reduce", "all_to_all_single", "all_gather_into_tensor", "all_gather_single",
               "broadcast", "reduce_scatter_tensor", "all_gather", "reduce")  # fmt: skip
EXPECTED: dict[str, torch.device] = {}


def _strict(name: str, fn):
    def wrapped(*args, **kwargs):
        for t in [*args, *kwargs.values()]:
            ts = t if isinstance(t, list | tuple) else [t]
            for x in ts:
                if isinstance(x, torch.Tensor) and "device" in EXPECTED:
                    assert x.device == EXPECTED["device"], (
                        f"NCCL rule: dist.{name} got a tensor on {x.device}, the parameters "
                        f"are on {EXPECTED['device']} (a tensor built without device=)"
                    )
        return fn(*args, **kwargs)

    return wrapped


def enforce_nccl_rules() -> None:
    for name in COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is not None and not getattr(fn, "_strict", False):
            w = _strict(name, fn)
            w._strict = True  # type: ignore[attr-defined]
            setattr(dist, name, w)


def strict_step(opt, params) -> None:
    """``opt.step()`` under NCCL's rules: default device ``meta``, collectives checked."""
    p = params[0]
    EXPECTED["device"] = p.to_local().device if hasattr(p, "to_local") else p.device
    with torch.device("meta"):
        opt.step()


def data(shapes, dtype, perturbed: bool = False):
    """The problem; ``perturbed``: its gradients perturbed by 1e-7 (relative), so that one
    process measures the problem's own sensitivity (tests/numerics.py)."""
    init, grads = problem(shapes, STEPS)
    if perturbed:
        grads = perturbed_grads(grads)
    init = [x.to(dtype) for x in init]
    grads = [[g.to(dtype) for g in gs] for gs in grads]
    grads[NAN_AT][1][0] = float("nan")
    return init, grads


class Placed:
    """Parameters as DDP (plain, identical gradients), FSDP2 (``DTensor`` ``Shard(0)``, as
    ``fully_shard`` leaves them after its reduce-scatter) or HSDP (``(Replicate(), Shard(0))``
    on a 2 x world/2 mesh, after its reduce-scatter and all-reduce) holds them."""

    def __init__(self, init: list[torch.Tensor], mode: str) -> None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.sharded = mode in ("fsdp", "hsdp") and world > 1
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Replicate, Shard, distribute_tensor

            if mode == "hsdp":  # 2 replicas x world/2 shards, as fully_shard on a 2-D mesh
                mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("rep", "shard"))
                placements = [Replicate(), Shard(0)]
            else:
                mesh, placements = init_device_mesh("cpu", (world,)), [Shard(0)]
            self._place = lambda x: distribute_tensor(x.clone(), mesh, placements)
        else:
            self._place = lambda x: x.clone()
        self.params = [torch.nn.Parameter(self._place(x)) for x in init]

    def set_grads(self, gs: list[torch.Tensor]) -> None:
        for p, g in zip(self.params, gs, strict=True):
            p.grad = self._place(g)

    def set_values(self, xs: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, x in zip(self.params, xs, strict=True):
                p.copy_(self._place(x))

    def full(self) -> list[torch.Tensor]:
        return [
            (p.detach().full_tensor() if self.sharded else p.detach()).clone() for p in self.params
        ]


def run_case(name: str, mode: str, dtype: torch.dtype, out: Path) -> None:
    make, set_name = CASES[name]
    init, grads = data(SHAPES[set_name], dtype, perturbed=mode == "perturbed")
    placed = Placed(init, mode)
    params, set_grads = placed.params, placed.set_grads
    opt = make(params)
    for gs in grads:
        set_grads(gs)
        strict_step(opt, params)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(
        {
            "params": placed.full(),
            "state_bytes": optimizer_state_bytes(opt),
            "comm_bytes": getattr(opt, "comm_bytes_per_step", 0),
            "skipped": int(opt.skipped_updates) if opt.skipped_updates is not None else 0,
        },
        out / f"{name}-{mode}-{str(dtype)[6:]}.rank{rank}.pt",
    )


def independent_models_are_refused(out: Path) -> None:
    """Per-rank models that are not one data-parallel model must not be mixed silently."""
    rank = dist.get_rank()
    p = torch.nn.Parameter(torch.full((4, 4), float(rank)))
    opt = SOAP([p])
    p.grad = torch.ones(4, 4)
    try:
        opt.step()
        msg = "no error"
    except ValueError as e:
        msg = str(e)
    (out / f"mismatch.rank{rank}.txt").write_text(msg)


CKPT_CASES = ("soap", "shampoo", "muon")


def checkpoint_case(out: Path, phase: str, mode: str) -> None:
    """User code (``soap.checkpoint``), DDP or FSDP2 parameters (``mode``), SOAP, Shampoo and
    Muon. ``save`` (any world size): 5 steps, ``soap.checkpoint.save``, 5 more; ``load`` (any
    world size, either mode): the step-5 parameters, a fresh optimizer,
    ``soap.checkpoint.load``, the last 5 steps. Both write their final parameters."""
    import soap.checkpoint

    rank = dist.get_rank() if dist.is_initialized() else 0
    for name in CKPT_CASES:
        make, set_name = CASES[name]
        init, grads = data(SHAPES[set_name], torch.float32)
        placed = Placed(init, mode)
        model = torch.nn.Module()
        model.ps = torch.nn.ParameterList(placed.params)
        if phase == "load":
            placed.set_values(torch.load(out / f"ckpt-{name}-params5.pt"))
        opt = make(list(model.parameters()))
        if phase == "load":
            soap.checkpoint.load(opt, model, str(out / f"ckpt-{name}"))
        for i, gs in enumerate(grads):
            if phase == "load" and i < 5:
                continue
            placed.set_grads(gs)
            opt.step()
            if phase == "save" and i == 4:
                soap.checkpoint.save(opt, model, str(out / f"ckpt-{name}"))
                values = placed.full()
                if rank == 0:
                    torch.save(values, out / f"ckpt-{name}-params5.pt")
        values = placed.full()
        if rank == 0:
            torch.save(values, out / f"ckpt-{name}-{phase}-{mode}.pt")
        if dist.is_initialized():
            dist.barrier()


def main() -> None:
    out = Path(sys.argv[1])
    modes = sys.argv[2].split(",")
    if "RANK" in __import__("os").environ:
        dist.init_process_group("gloo")
    enforce_nccl_rules()
    torch.set_num_threads(1)
    if "mismatch" in modes:
        independent_models_are_refused(out)
        modes.remove("mismatch")
    for m in [m for m in modes if m.startswith("ckpt_")]:  # ckpt_save:fsdp, ckpt_load:ddp, ...
        phase, mode = m[len("ckpt_") :].split(":")
        checkpoint_case(out, phase, mode)
        modes.remove(m)
    for mode in modes:
        for dtype in (torch.float32, torch.bfloat16):
            for name in CASES:
                if dtype == torch.bfloat16 and name not in ("soap", "muon"):
                    continue
                run_case(name, mode, dtype, out)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
