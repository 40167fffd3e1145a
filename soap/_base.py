"""Machinery shared by SOAP and Shampoo: lazy per-parameter state, shape buckets, stacked
state buffers, the non-finite gradient guard and a dtype-preserving ``load_state_dict``.

Why buckets: a transformer has many matrices of identical shape (every layer's projections).
Stacking them lets one batched ``matmul``/``eigh``/``qr`` replace dozens of small calls. The
stacked state lives in one buffer per bucket and ``self.state[p][name]`` is a *view* of row
``i`` of it, so nothing is copied per step, ``state_dict()`` still holds one tensor per
parameter, and a reloaded state dict is re-stacked once on the next step. With
``foreach=False`` every parameter is its own bucket of size one (the plain path); the maths
is the same code either way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .functional import ShapePlan, from_working, plan_shape, to_working

NONFINITE_MODES = ("raise", "skip")
BATCH_MAX_NUMEL = 1 << 20  # tensors larger than this are not stacked with others


class NonFiniteGradientError(RuntimeError):
    """A parameter received a NaN or infinite gradient."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def validate_common(group: dict[str, Any], name: str) -> None:
    """Shared hyperparameter checks (``ValueError`` with a readable message)."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        lr = float(lr)
    _check(
        isinstance(lr, (int, float)) and lr >= 0.0,
        f"{name}: invalid learning rate lr={lr!r} (must be >= 0)",
    )
    betas = group["betas"]
    _check(
        isinstance(betas, (tuple, list)) and len(betas) == 2,
        f"{name}: betas must be a pair (beta1, beta2), got {betas!r}",
    )
    for i, b in enumerate(betas):
        _check(0.0 <= float(b) < 1.0, f"{name}: invalid beta{i + 1}={b!r} (must be in [0, 1))")
    _check(
        float(group["weight_decay"]) >= 0.0,
        f"{name}: invalid weight_decay={group['weight_decay']!r} (must be >= 0)",
    )
    check_positive_int(group, "precondition_frequency", name)
    _check(
        group["nonfinite_grad"] in NONFINITE_MODES,
        f"{name}: nonfinite_grad must be one of {NONFINITE_MODES}, got {group['nonfinite_grad']!r}",
    )
    _check(
        group["data_format"] in ("channels_first", "channels_last"),
        f"{name}: data_format must be 'channels_first' or 'channels_last', got {group['data_format']!r}",
    )


def check_positive_int(group: dict[str, Any], key: str, name: str) -> None:
    v = group[key]
    _check(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        f"{name}: {key} must be an integer >= 1, got {v!r}",
    )


def check_bools(group: dict[str, Any], keys: Iterable[str], name: str) -> None:
    for k in keys:
        _check(isinstance(group[k], bool), f"{name}: {k} must be a bool, got {group[k]!r}")


class BucketedOptimizer(Optimizer):
    """Base class; subclasses implement :meth:`_plan`, :meth:`_layout`, :meth:`_state_spec`
    and :meth:`_step_bucket`."""

    _name = "optimizer"

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._stack_cache: dict[
            tuple, tuple[tuple[str, ...], dict[str, Tensor], list[list[int]]]
        ] = {}
        super().__init__(params, defaults)

    # ---- hooks for subclasses ---------------------------------------------------------
    def _validate(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    _max_dim_key = "max_precond_dim"  # the group key of the largest preconditioned dimension

    def _plan(self, p: Tensor, group: dict[str, Any]) -> ShapePlan:
        return plan_shape(
            p.shape,
            merge_dims=group["merge_dims"],
            max_precond_dim=group[self._max_dim_key],
            data_format=group["data_format"],
        )

    def _layout(self, plan: ShapePlan, group: dict[str, Any]) -> tuple:  # pragma: no cover
        raise NotImplementedError

    def _state_spec(self, plan: ShapePlan, layout: tuple) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError  # pragma: no cover

    def _init_state(self, name: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=device)

    def _step_bucket(  # pragma: no cover - abstract
        self,
        group: dict[str, Any],
        params: list[Tensor],
        plan: ShapePlan,
        layout: tuple,
        grad: Tensor,
    ) -> None:
        raise NotImplementedError

    # ---- torch.optim contract ---------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep the state in fp32.

        torch casts floating state to the parameter's dtype, which would round SOAP's fp32
        factors and bases to bf16 for bf16 parameters; we re-read them from ``state_dict``.
        """
        super().load_state_dict(state_dict)
        self._stack_cache.clear()
        saved = state_dict["state"]
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, p in enumerate(params):
            if idx not in saved:
                continue
            for k, v in saved[idx].items():
                if isinstance(v, Tensor):
                    self.state[p][k] = v.to(device=p.device, copy=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every group before touching any state, so a bad gradient leaves all untouched.
        active = [self._finite_params(gi, g) for gi, g in enumerate(self.param_groups)]
        for group, params in zip(self.param_groups, active, strict=True):
            buckets: dict[tuple, list[Tensor]] = defaultdict(list)
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self._name} does not support sparse gradients")
                plan = self._plan(p, group)
                layout = self._layout(plan, group)
                key = (plan, layout, self.state[p].get("step", -1), p.device, p.dtype)
                # Stacking pays for many small matrices (one batched kernel instead of many
                # launches); for large ones a batched matmul is slower than separate ones
                # (measured on CPU: 15-25% for 32100x256), so they stay on their own.
                if not group["foreach"] or p.numel() > BATCH_MAX_NUMEL:
                    key = key + (id(p),)
                buckets[key].append(p)
            for (plan, layout, *_), ps in buckets.items():
                if len(ps) == 1:
                    grad = to_working(ps[0].grad, plan).unsqueeze(0)
                else:
                    grad = torch.stack([to_working(p.grad, plan) for p in ps])
                # fp32 maths whatever the parameter dtype; never modified in place.
                self._step_bucket(group, ps, plan, layout, grad.float())
        return loss

    # ---- helpers for subclasses ---------------------------------------------------------
    def _param_name(self, group_index: int, p: Tensor) -> str:
        group = self.param_groups[group_index]
        names = group.get("param_names")
        for i, q in enumerate(group["params"]):
            if q is p:
                if names:
                    return names[i]
                return f"param_groups[{group_index}]['params'][{i}] (shape {tuple(p.shape)})"
        return f"parameter of shape {tuple(p.shape)}"

    def _finite_params(self, group_index: int, group: dict[str, Any]) -> list[Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return params
        # Max-abs norm: one fused pass over all gradients, NaN/inf propagate, and unlike a sum
        # it cannot overflow on finite values. One device sync per group.
        flags = torch.isfinite(
            torch.stack(torch._foreach_norm([p.grad for p in params], float("inf")))
        )
        if bool(flags.all()):
            return params
        bad = [p for p, ok in zip(params, flags.tolist(), strict=True) if not ok]
        if group["nonfinite_grad"] == "raise":
            names = ", ".join(self._param_name(group_index, p) for p in bad)
            raise NonFiniteGradientError(
                f"{self._name}: non-finite gradient (NaN/inf) in {names}; optimizer state left "
                "untouched. Lower the learning rate or enable gradient clipping, or pass "
                "nonfinite_grad='skip' to skip such updates."
            )
        bad_ids = {id(p) for p in bad}
        return [p for p in params if id(p) not in bad_ids]

    def _ensure_state(self, params: list[Tensor], spec: dict[str, tuple[int, ...]]) -> bool:
        """Create missing state; returns True if it was created (the tensor's first step)."""
        created = False
        for p in params:
            st = self.state[p]
            if "step" not in st:
                created = True
                for name, shape in spec.items():
                    st[name] = self._init_state(name, shape, p.device)
        return created

    def _buffers(self, params: list[Tensor], names: Iterable[str]) -> dict[str, Tensor]:
        """Stacked ``(B, ...)`` state for ``params``; ``self.state`` entries become views."""
        names = tuple(names)
        if len(params) == 1:
            st = self.state[params[0]]
            return {n: st[n].unsqueeze(0) for n in names}
        key = tuple(id(p) for p in params)
        cached = self._stack_cache.get(key)
        if cached is not None:
            cached_names, bufs, ptrs = cached
            if cached_names == names and all(
                self.state[p][n].data_ptr() == ptrs[j][i]
                for j, n in enumerate(names)
                for i, p in enumerate(params)
            ):
                return bufs
        # (Re)build: after the first step, a load_state_dict, or a change of membership.
        ids = set(key)
        for k in [k for k in self._stack_cache if ids.intersection(k)]:
            del self._stack_cache[k]
        bufs, ptrs = {}, []
        for n in names:
            buf = torch.stack([self.state[p][n] for p in params])
            row_ptrs = []
            for i, p in enumerate(params):
                self.state[p][n] = buf[i]
                row_ptrs.append(buf[i].data_ptr())
            bufs[n] = buf
            ptrs.append(row_ptrs)
        self._stack_cache[key] = (names, bufs, ptrs)
        return bufs

    @staticmethod
    def _apply_update(
        params: list[Tensor],
        plan: ShapePlan,
        update: Tensor,
        step_size: float,
        decay: float,
        decay_first: bool,
    ) -> None:
        """``p -= step_size * update`` plus decoupled weight decay ``p -= decay * p``.

        ``decay_first`` selects torch AdamW's order (decay, then update); the SOAP reference
        decays after the update.
        """
        ups = [
            from_working(u, plan).to(p.dtype) for u, p in zip(update.unbind(0), params, strict=True)
        ]
        if decay_first and decay != 0.0:
            torch._foreach_add_(params, params, alpha=-decay)
        torch._foreach_add_(params, ups, alpha=-step_size)
        if not decay_first and decay != 0.0:
            torch._foreach_add_(params, params, alpha=-decay)

    def _set_step(self, params: list[Tensor], step: int) -> None:
        for p in params:
            self.state[p]["step"] = step
