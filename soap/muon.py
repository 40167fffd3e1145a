"""Muon (Jordan et al. 2024) on the shared bucketed machinery: ``torch.optim.Muon``'s maths,
with equal-shaped matrices orthogonalised together (batched Newton-Schulz) and the same
distributed mode, non-finite handling and checkpoints as :class:`soap.SOAP`.

For a gradient ``G`` of an ``m x n`` matrix, momentum ``mu`` and Nesterov:

.. math::

    B &\\leftarrow \\mu B + (1-\\mu) G, \\qquad U = (1-\\mu) G + \\mu B \\ (\\text{Nesterov})
    \\ \\text{or}\\ B                                                        \\\\
    O &= \\mathrm{NS}_5(U / \\|U\\|_F) \\approx \\text{the orthogonal polar factor of } U
    \\ (\\text{quintic Newton-Schulz in bf16})                                \\\\
    W &\\leftarrow (1 - \\eta\\lambda) W - \\eta\\, r(m, n)\\, O

with ``r = max(1, m/n)^{1/2}`` (``adjust_lr_fn="original"``) or ``0.2 max(m, n)^{1/2}``
(``"match_rms_adamw"``: the update's RMS matches AdamW's, so one LR scale fits both).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from ._base import Bucket, BucketedOptimizer
from ._validate import _check, check_lr, check_modes, check_positive_int
from .layout import Layout, ShapePlan, unchanged_plan

__all__ = ["Muon"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    g: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """Batched quintic Newton-Schulz orthogonalisation of ``(B, m, n)`` in bf16 (torch's
    ``_zeropower_via_newtonschulz`` per matrix)."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    m, n = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, m / n))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(m, n))
    return lr


class Muon(BucketedOptimizer):
    """Muon for 2-D parameters (``torch.optim.Muon``'s arguments and defaults), plus
    ``foreach``, ``nonfinite_grad`` and ``distributed`` as in :class:`soap.SOAP`."""

    _name = "Muon"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        foreach: bool = True,
        nonfinite_grad: str = "skip",
        distributed: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            foreach=foreach,
            nonfinite_grad=nonfinite_grad,
            distributed=distributed,
        )
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        check_lr(group, "Muon")
        _check(group["momentum"] >= 0, f"Muon: invalid momentum={group['momentum']!r}")
        _check(group["weight_decay"] >= 0, f"Muon: invalid weight_decay={group['weight_decay']!r}")
        _check(
            group["adjust_lr_fn"] in (None, "original", "match_rms_adamw"),
            f"Muon: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {group['adjust_lr_fn']!r}",
        )
        _check(len(group["ns_coefficients"]) == 3, "Muon: ns_coefficients must be 3 numbers")
        check_positive_int(group, "ns_steps", "Muon")
        check_modes(group, "Muon")
        for p in group["params"]:
            _check(p.ndim == 2, f"Muon only supports 2-D parameters, got shape {tuple(p.shape)}")

    def _plan(self, p: Tensor, group: dict[str, Any]) -> ShapePlan:
        return unchanged_plan(p.shape)

    def _layout(self, p: Tensor, group: dict[str, Any]) -> Layout:
        return Layout(self._plan(p, group), (False, False))

    def _extra_flops(self, layout: Layout, group: dict[str, Any]) -> float:
        """Newton-Schulz on an ``m x n`` matrix, ``a = min(m, n)``, ``b = max(m, n)``: per
        iteration ``X X^T`` (``2a^2 b``), the quadratic in it (``2a^3``) and its product with
        ``X`` (``2a^2 b``)."""
        a, b = sorted(layout.shape)
        return float(group["ns_steps"] * (4 * a * a * b + 2 * a**3))

    def _state_spec(self, layout: Layout) -> dict[str, tuple[int, ...]]:
        return {"momentum_buffer": layout.shape}

    def _step_bucket(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad: Tensor,
        keep: Tensor | None,
        targets: list[Tensor],
    ) -> None:
        mu = group["momentum"]
        buf = bucket.buffers["momentum_buffer"]
        self._advance(bucket.params)
        F.ema_(buf, grad, mu, keep)
        update = grad.lerp(buf, mu) if group["nesterov"] else buf
        ortho = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
        lr = group["lr"]
        F.apply_update_(
            targets,
            bucket.layout.plan,
            ortho.float(),
            adjusted_lr(lr, group["adjust_lr_fn"], bucket.layout.shape),
            lr * group["weight_decay"],
            decay_first=True,
            keep=keep,
        )
