"""Machinery shared by SOAP and Shampoo: lazy per-parameter state, shape buckets, stacked
state buffers, non-finite gradients without host synchronisation, a dtype-preserving
``load_state_dict``, and the hooks the distributed mode (:mod:`soap.distributed`) plugs into.

Why buckets: a transformer has many matrices of identical shape (every layer's projections).
Stacking them lets one batched ``matmul``/``eigh``/``qr`` replace dozens of small calls. The
stacked state lives in one buffer per bucket and ``self.state[p][name]`` is a *view* of row
``i`` of it, so nothing is copied per step and ``state_dict()`` still holds one tensor per
parameter. The bucket plan is built once and reused while the set of parameters with a
gradient stays the same; it is rebuilt after ``load_state_dict``, ``add_param_group``, a
tensor's first step, or a change of that set (all known on the host, so a step never compares
pointers or reads a device value). Replace state tensors only through ``load_state_dict``.
With ``foreach=False`` every parameter is its own bucket (the plain path); the maths is the
same code either way.

Non-finite gradients (``nonfinite_grad``, "skip" or "raise"): see :mod:`soap.nonfinite`.
The step count and why it is a tensor: :mod:`soap.stepcount`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional as F
from ._validate import refuse_foreign_state
from .distributed import Distribution, create, is_dtensor
from .layout import STEP, Layout, ShapePlan, plan_shape, to_working
from .nonfinite import (
    finite_flags,
    host_all_finite,
    raise_on_nonfinite,
)
from .stepcount import Cohorts, advance, as_count, new_count

BATCH_MAX_NUMEL = 1 << 20  # tensors larger than this are not stacked with others


@dataclass(eq=False)
class Bucket:
    """Parameters of one group with the same layout, step, device and dtype, stepped together.

    ``buffers`` holds their stacked ``(B, ...)`` state; ``self.state[p][name]`` are views of it.
    ``first`` marks tensors whose state was created for this step.
    """

    group_index: int
    layout: Layout
    params: list[Tensor]
    first: bool
    buffers: dict[str, Tensor] = field(default_factory=dict)


class BucketedOptimizer(Optimizer):
    """Base class; subclasses implement :meth:`_validate`, :meth:`_layout`,
    :meth:`_state_spec` and :meth:`_step_bucket`."""

    _name = "optimizer"
    _max_dim_key = "max_precond_dim"  # the group key of the largest preconditioned dimension

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        # Bookkeeping lives in a dict, not in attributes: torch.compile (2.13) silently drops
        # attribute assignments made inside a compiled Optimizer.step, but keeps dict updates.
        self._book: dict[str, Any] = {
            "plan": None,  # (signature, buckets)
            "version": 0,  # bumped whenever the bucket plan must be rebuilt
            "distribution": None,  # soap.distributed.Distribution (None: one process)
            "distribution_known": False,  # whether "distribution" has been chosen
            "skipped": None,  # device tensor: parameter updates skipped for non-finite grads
            "scratch": {},  # reusable temporaries on CPU (fresh allocations page-fault there)
            "cohorts": Cohorts(),  # which parameters are at the same step (soap.stepcount)
            "checked": False,  # grads_checked_finite() for the next step
        }
        super().__init__(params, defaults)

    @property
    def skipped_updates(self) -> Tensor | None:
        """Parameter updates skipped for a non-finite gradient (a device tensor, or None)."""
        return self._book["skipped"]

    def grads_checked_finite(self) -> None:
        """The caller saw this step's gradients finite (a grad norm it read): the next step
        skips its screen, a masked path on accelerators (``nonfinite_grad='raise'`` checks)."""
        self._book["checked"] = True

    def _invalidate(self) -> None:
        self._book["version"] += 1

    # ---- hooks for subclasses ---------------------------------------------------------
    def _validate(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _layout(self, p: Tensor, group: dict[str, Any]) -> Layout:  # pragma: no cover
        raise NotImplementedError

    def _state_spec(self, layout: Layout) -> dict[str, tuple[int, ...]]:  # pragma: no cover
        raise NotImplementedError

    def _step_bucket(  # pragma: no cover - abstract
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad: Tensor,
        keep: Tensor | None,
        targets: list[Tensor],
    ) -> None:
        raise NotImplementedError

    def _plan(self, p: Tensor, group: dict[str, Any]) -> ShapePlan:
        return plan_shape(
            p.shape,
            merge_dims=group["merge_dims"],
            max_precond_dim=group[self._max_dim_key],
            data_format=group["data_format"],
        )

    def _init_state(self, name: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=device)

    # ---- torch.optim contract ---------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate(group)
        if group["distributed"] != self.param_groups[0]["distributed"]:
            raise ValueError(f"{self._name}: every param group must use the same `distributed`")
        if group["distributed"] == "off":
            for i, p in enumerate(group["params"]):
                if is_dtensor(p):
                    name = (group.get("param_names") or [f"params[{i}]"] * (i + 1))[i]
                    raise TypeError(
                        f"{self._name}: parameter {name} is a DTensor (FSDP2/tensor-parallel "
                        "shard) but distributed='off' would precondition each shard alone: "
                        "use distributed='auto'"
                    )
        self._invalidate()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep the state in fp32.

        torch casts floating state to the parameter's dtype, which would round SOAP's fp32
        factors and bases to bf16 for bf16 parameters; we re-read them from ``state_dict``.
        A state dict of the public reference SOAP (``GG``/``Q`` entries), or one another
        optimizer class wrote (whose state entries differ), is refused in one line.
        """
        refuse_foreign_state(state_dict, self._name)
        super().load_state_dict(state_dict)
        for g in self.param_groups:  # hyperparameters added since the state dict was written
            for k, v in self.defaults.items():
                g.setdefault(k, v)
        saved = state_dict["state"]
        params = [p for g in self.param_groups for p in g["params"]]
        counts = {}
        for idx, p in enumerate(params):
            if idx not in saved:
                continue
            for k, v in saved[idx].items():
                if k == STEP:  # a CPU tensor whatever was saved (an int from older versions)
                    self.state[p][k] = counts[id(p)] = as_count(v)
                elif isinstance(v, Tensor):
                    self.state[p][k] = v.to(device=p.device, copy=True)
        self._book["cohorts"].loaded(counts)
        self._invalidate()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dist = self._get_distribution()
        if dist is not None:
            return dist.step(self, loss)
        buckets = self._buckets()
        self._run(
            buckets, [[p.grad for p in b.params] for b in buckets], [b.params for b in buckets]
        )
        return loss

    # ---- the step, shared with the distributed mode ------------------------------------
    def _run(
        self,
        buckets: list[Bucket],
        grads: list[list[Tensor]],
        targets: list[list[Tensor]],
        check: bool = True,
        after_bucket: Callable[[Bucket], None] | None = None,
    ) -> None:
        """Step every bucket with its (full) gradients, updating its ``targets`` in place
        (the parameters themselves, or full copies in the distributed FSDP mode)."""
        if check:
            self._raise_on_nonfinite(
                [
                    (p, g)
                    for b, gs in zip(buckets, grads, strict=True)
                    for p, g in zip(b.params, gs, strict=True)
                ]
            )
        host_ok = self._book["checked"] or self._host_all_finite(grads)
        self._book["checked"] = False
        self._book["cohorts"].stepped()
        first = False
        for b, gs, ts in zip(buckets, grads, targets, strict=True):
            group = self.param_groups[b.group_index]
            grad = self._working_grad(b, gs)
            keep = None
            if group["nonfinite_grad"] == "skip" and not host_ok:
                ok = finite_flags(gs)
                self._count_skipped(ok)
                ok = ok.expand(grad.shape[0])  # a blocked parameter's blocks share its flag
                keep = ok.to(torch.float32).view(-1, *([1] * (grad.dim() - 1)))
                grad = torch.where(ok.view_as(keep), grad, 0.0)
            if b.layout.blocks > 1:  # its blocks, as views of the parameter
                lay = b.layout
                ts = list(to_working(ts[0], lay.param_plan).view(lay.blocks, *lay.shape).unbind(0))
            self._step_bucket(group, b, grad, keep, ts)
            first = first or b.first
            if after_bucket is not None:
                after_bucket(b)
        if first:
            self._invalidate()  # tensors that took their first step now bucket by step

    def _raise_on_nonfinite(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        """``nonfinite_grad='raise'``: one host check of these (parameter, gradient) pairs."""
        mode = {id(p): g["nonfinite_grad"] for g in self.param_groups for p in g["params"]}
        raise_on_nonfinite(
            [(p, g) for p, g in pairs if mode[id(p)] == "raise"], self._name, self._param_name
        )

    _host_all_finite = staticmethod(host_all_finite)

    def _count_skipped(self, ok: Tensor) -> None:
        bad, book = (~ok).sum(), self._book
        book["skipped"] = bad if book["skipped"] is None else book["skipped"] + bad

    @staticmethod
    def _working_grad(bucket: Bucket, grads: list[Tensor]) -> Tensor:
        """The bucket's gradients in working shape, stacked ``(B, ...)``, in fp32 (a blocked
        parameter's blocks are the batch)."""
        layout = bucket.layout
        plan = layout.plan
        if layout.blocks > 1:
            return (
                to_working(grads[0], layout.param_plan)
                .reshape(layout.blocks, *layout.shape)
                .float()
            )
        if len(grads) == 1:
            g = to_working(grads[0], plan).unsqueeze(0)
        else:
            g = torch.stack([to_working(x, plan) for x in grads])
        return g.float()  # fp32 maths whatever the parameter dtype; never modified in place

    # ---- the bucket plan ----------------------------------------------------------------
    def _active(self) -> list[tuple[int, Tensor]]:
        """``(group index, parameter)`` of every parameter this rank steps now."""
        dist = self._book["distribution"]
        owns = dist.owns if dist is not None else None
        return [
            (gi, p)
            for gi, g in enumerate(self.param_groups)
            for p in g["params"]
            if p.grad is not None and (owns is None or owns(p))
        ]

    def _buckets(self) -> list[Bucket]:
        signature = (
            self._book["version"],
            tuple(tuple(p.grad is not None for p in g["params"]) for g in self.param_groups),
        )
        cached = self._book["plan"]
        if cached is not None and cached[0] == signature:
            return cached[1]
        if cached is not None:
            self._book["cohorts"].moved_on(p for b in cached[1] for p in b.params)
        buckets = self._build_buckets(self._active())
        self._book["plan"] = (signature, buckets)
        return buckets

    def _build_buckets(self, active: list[tuple[int, Tensor]]) -> list[Bucket]:
        keyed: dict[tuple, list[Tensor]] = {}
        layouts: dict[tuple, Layout] = {}
        cohorts = self._book["cohorts"]
        for gi, p in active:
            group = self.param_groups[gi]
            layout = self._layout(p, group)
            st = self.state.get(p)
            started = bool(st) and STEP in st
            # Same cohort: same step (soap.stepcount), without reading a count on the host.
            key: tuple = (gi, layout, started, cohorts.of(p), p.device, p.dtype)
            # Stacking pays for many small matrices (one batched kernel instead of many
            # launches); for large ones a batched matmul is slower than separate ones
            # (measured on CPU: 15-25% for 32100x256), so they stay on their own.
            if not group["foreach"] or p.numel() > BATCH_MAX_NUMEL or layout.blocks > 1:
                key = (*key, len(keyed))
            keyed.setdefault(key, []).append(p)
            layouts[key] = layout
        buckets = []
        for key, ps in keyed.items():
            layout = layouts[key]
            first = not key[2]
            spec = self._state_spec(layout)
            if first:
                lead = (layout.blocks,) if layout.blocks > 1 else ()
                for p in ps:
                    st = self.state[p]
                    for name, shape in spec.items():
                        init = self._init_state(name, shape, p.device)
                        st[name] = init.expand(*lead, *shape).clone() if lead else init
                    st[STEP] = new_count()
            if layout.blocks > 1:  # the state already has the blocks as its batch dimension
                bufs = {n: self.state[ps[0]][n] for n in spec}
            else:
                bufs = self._stack(ps, spec)
            buckets.append(Bucket(key[0], layout, ps, first, bufs))
        return buckets

    def _stack(self, params: list[Tensor], names: Iterable[str]) -> dict[str, Tensor]:
        """Stacked ``(B, ...)`` state for ``params``; ``self.state`` entries become views."""
        if len(params) == 1:
            st = self.state[params[0]]
            return {n: st[n].unsqueeze(0) for n in names}
        bufs = {}
        for n in names:
            buf = torch.stack([self.state[p][n] for p in params])
            for i, p in enumerate(params):
                self.state[p][n] = buf[i]
            bufs[n] = buf
        return bufs

    def owned_parameters(self) -> list[Tensor]:
        """The parameters whose state this rank holds (all of them unless distributed)."""
        dist = self._get_distribution()
        return [p for g in self.param_groups for p in g["params"] if dist is None or dist.owns(p)]

    @property
    def comm_bytes_per_step(self) -> int:
        """Bytes this rank sent and received in the last distributed step (0 if none)."""
        dist = self._book["distribution"]
        return dist.comm_bytes_per_step if dist is not None else 0

    # ---- helpers for subclasses ---------------------------------------------------------
    def _get_distribution(self) -> Distribution | None:
        if self.param_groups[0]["distributed"] == "off":
            return None
        book = self._book
        if not book["distribution_known"]:
            book["distribution"] = create(self)
            book["distribution_known"] = True
        return book["distribution"]

    def param_cost(self, p: Tensor, group: dict[str, Any]) -> tuple[float, float]:
        """``(FLOPs per step, state bytes)`` of ``p``, on which :mod:`soap.distributed`
        balances owners: 10 FLOPs per entry of elementwise work plus :meth:`_extra_flops`;
        4 bytes per fp32 state entry."""
        layout = self._layout(p, group)
        state = sum(4 * torch.Size(shape).numel() for shape in self._state_spec(layout).values())
        flops = self._extra_flops(layout, group) + 10 * torch.Size(layout.shape).numel()
        return float(flops), float(state)

    def _extra_flops(self, layout: Layout, group: dict[str, Any]) -> float:
        """Per-step FLOPs beyond elementwise work (preconditioners, orthogonalisation)."""
        return 0.0

    def _param_name(self, p: Tensor) -> str:
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for i, q in enumerate(group["params"]):
                if q is p:
                    if names:
                        return names[i]
                    return f"param_groups[{gi}]['params'][{i}] (shape {tuple(p.shape)})"
        return f"parameter of shape {tuple(p.shape)}"

    def _scratch(self, slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """A reusable fp32 buffer of ``shape`` on CPU (eager), else ``None`` (allocate): a
        fresh large temporary page-faults there (~3 ms per 32 MB), one buffer per slot sized
        for the largest bucket does not; accelerators' caching allocators need none."""
        if like.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        n = 1
        for s in shape:
            n *= s
        store = self._book["scratch"]
        buf = store.get(slot)
        if buf is None or buf.numel() < n:
            buf = store[slot] = torch.empty(n, dtype=torch.float32, device="cpu")
        return buf[:n].view(shape)

    def _advance(self, params: list[Tensor]) -> int | Tensor:
        """One more step for a bucket's ``params``: the new count (:mod:`soap.stepcount`)."""
        return advance([self.state[p][STEP] for p in params])

    _apply_update = staticmethod(F.apply_update_)
    _apply_product_update = staticmethod(F.apply_product_update_)
