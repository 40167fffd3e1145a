"""AdamW on the shared bucketed machinery: ``torch.optim.AdamW``'s maths (decoupled decay
before the step, ``eps`` outside the square root, bias-corrected), for the parameters
:class:`soap.MuonAdamW` does not give to Muon, so they are distributed like its matrices.

.. math::

    m &\\leftarrow \\beta_1 m + (1-\\beta_1) g, \\qquad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2 \\\\
    W &\\leftarrow (1 - \\eta\\lambda) W - \\frac{\\eta}{1-\\beta_1^t}
        \\frac{m}{\\sqrt{v / (1-\\beta_2^t)} + \\epsilon}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from . import functional as F
from ._base import Bucket, BucketedOptimizer
from ._validate import _check, validate_adam
from .layout import Layout, ShapePlan, unchanged_plan

__all__ = ["AdamW"]


class AdamW(BucketedOptimizer):
    """``torch.optim.AdamW``'s maths (decoupled decay before the step, ``eps`` outside the
    square root, bias-corrected) on the shared machinery, so that :func:`soap.MuonAdamW`'s
    non-matrix parameters are distributed like its matrices."""

    _name = "AdamW"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        foreach: bool = True,
        nonfinite_grad: str = "skip",
        distributed: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            nonfinite_grad=nonfinite_grad,
            distributed=distributed,
        )
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        validate_adam(group, "AdamW")
        _check(group["eps"] > 0, f"AdamW: invalid eps={group['eps']!r} (must be > 0)")

    def _plan(self, p: Tensor, group: dict[str, Any]) -> ShapePlan:
        return unchanged_plan(p.shape)

    def _layout(self, p: Tensor, group: dict[str, Any]) -> Layout:
        plan = self._plan(p, group)
        return Layout(plan, tuple(False for _ in plan.shape))

    def _state_spec(self, layout: Layout) -> dict[str, tuple[int, ...]]:
        return {"exp_avg": layout.shape, "exp_avg_sq": layout.shape}

    def _step_bucket(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad: Tensor,
        keep: Tensor | None,
        targets: list[Tensor],
    ) -> None:
        beta1, beta2 = group["betas"]
        step = self._advance(bucket.params)
        buf = bucket.buffers
        F.adam_moments_(buf["exp_avg"], buf["exp_avg_sq"], grad, beta1, beta2, keep)
        bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
        denom = (buf["exp_avg_sq"].sqrt() / bc2**0.5).add_(group["eps"])
        lr = group["lr"]
        F.apply_update_(
            targets,
            bucket.layout.plan,
            buf["exp_avg"] / denom,
            lr / bc1,
            lr * group["weight_decay"],
            decay_first=True,
            keep=keep,
        )
