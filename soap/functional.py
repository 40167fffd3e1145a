"""Pure update maths shared by :class:`soap.SOAP` and :class:`soap.Shampoo`.

Every function here works on *batched* tensors: a leading dimension ``B`` stacks ``B``
parameters of the same working shape. The per-tensor ("plain") path calls the very same
functions with ``B == 1``, which is why the batched and plain paths agree.

Notation (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam",
arXiv 2409.11321, Algorithm 3): for a gradient ``G`` of an ``m x n`` layer,

* factors ``L = EMA(G G^T)`` and ``R = EMA(G^T G)``; for a k-dimensional tensor, the factor
  of dimension ``i`` is ``G`` contracted with itself over every other dimension;
* eigenbases ``Q_L``, ``Q_R``; rotation into the eigenbasis ``G' = Q_L^T G Q_R``
  (:func:`rotate` with ``transpose=True``) and back ``Q_L G' Q_R^T`` (``transpose=False``).

A dimension without a factor (too large, or switched off) uses the identity: its entry in
the ``mats`` lists below is ``None``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from torch import Tensor

from .layout import ShapePlan, from_working

__all__ = [
    "gram",
    "update_factors_",
    "rotate",
    "ema_",
    "adam_moments_",
    "factored_second_moment_",
    "soap_step_size",
    "normalize_rms",
    "permute_along_",
    "apply_update_",
    "apply_product_update_",
]


# --------------------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------------------
def gram(g: Tensor, dim: int) -> Tensor:
    """Contract ``g`` (shape ``(B, d_1, ..., d_k)``) with itself over every dimension but
    ``dim`` (1-based, the batch is dimension 0): returns ``(B, d_dim, d_dim)``.

    For a matrix ``G`` this is ``G G^T`` (dim 1) or ``G^T G`` (dim 2).
    """
    if g.dim() == 3:
        return g @ g.mT if dim == 1 else g.mT @ g
    x = g.movedim(dim, 1).reshape(g.shape[0], g.shape[dim], -1)
    return x @ x.mT


def _weight(beta: float, keep: Tensor | None) -> float | Tensor:
    """EMA weight ``1 - beta``, times the per-tensor mask ``keep`` ``(B, 1, ...)`` if given."""
    return 1.0 - beta if keep is None else (1.0 - beta) * keep


def update_factors_(
    factors: Sequence[Tensor | None], g: Tensor, beta: float, keep: Tensor | None = None
) -> None:
    """``F_i <- beta F_i + (1 - beta) gram(g, i)`` in place for every factor that exists.

    ``keep`` (``(B, 1, 1)``, 1.0 or 0.0 per stacked tensor) masks the update on the device: a
    0 leaves that tensor's factors untouched, with no host synchronisation.
    """
    w = _weight(beta, keep.reshape(-1, 1, 1) if keep is not None else None)
    for i, f in enumerate(factors):
        if f is None:
            continue
        if keep is None and g.dim() == 3:  # fused: no temporary d x d product
            a, b = (g, g.mT) if i == 0 else (g.mT, g)
            f.baddbmm_(a, b, beta=beta, alpha=1.0 - beta)
        else:
            f.lerp_(gram(g, i + 1), w)


# --------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------
def _rotate_dim(x: Tensor, q: Tensor, dim: int, transpose: bool) -> Tensor:
    """Multiply batched ``x`` along dimension ``dim`` by ``q^T`` (transpose) or ``q``."""
    letters = string.ascii_letters[: x.dim()]
    out = letters.replace(letters[dim], "Z")
    # transpose: y[..a..] = sum_i q[i, a] x[..i..]  (Q^T x);  else y[..i..] = sum_a q[i, a] x[..a..]
    spec = f"{letters},{letters[0]}{letters[dim]}Z->{out}"
    if not transpose:
        spec = f"{letters},{letters[0]}Z{letters[dim]}->{out}"
    return torch.einsum(spec, x, q)


def rotate(
    x: Tensor, mats: Sequence[Tensor | None], *, transpose: bool, out: Tensor | None = None
) -> Tensor:
    """Rotate batched ``x`` (``(B, d_1, ..., d_k)``) dimension by dimension.

    ``transpose=True`` computes ``Q_1^T ... x ... Q_k`` (into the eigenbasis; for a matrix
    ``Q_L^T X Q_R``); ``transpose=False`` the inverse ``Q_L X Q_R^T``. ``None`` entries are the
    identity. Symmetric ``mats`` (Shampoo's inverse roots) give the same result either way.
    ``out`` receives a matrix's last product (a reusable buffer); other shapes ignore it.
    """
    if x.dim() == 3 and len(mats) == 2:
        ql, qr = mats
        if ql is not None and qr is not None:
            x = ql.mT @ x if transpose else ql @ x
        elif ql is not None:
            return torch.matmul(ql.mT if transpose else ql, x, out=out)
        if qr is not None:
            return torch.matmul(x, qr if transpose else qr.mT, out=out)
        return x
    for i, q in enumerate(mats):
        if q is not None:
            x = _rotate_dim(x, q, i + 1, transpose)
    return x


# --------------------------------------------------------------------------------------
# Adam in the rotated basis
# --------------------------------------------------------------------------------------
def ema_(avg: Tensor, x: Tensor, beta: float, keep: Tensor | None = None) -> None:
    """``avg <- beta avg + (1 - beta) x`` in place; with ``keep`` (``(B, 1, ...)``) a 0
    leaves that stacked tensor untouched."""
    avg.lerp_(x, _weight(beta, keep))  # one pass (mul_ + add_ would be two)


def adam_moments_(
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    g: Tensor,
    beta1: float,
    beta2: float,
    keep: Tensor | None = None,
) -> None:
    """``m <- beta1 m + (1-beta1) g``, ``v <- beta2 v + (1-beta2) g^2`` in place (masked by
    ``keep`` as in :func:`ema_`)."""
    ema_(exp_avg, g, beta1, keep)
    if keep is None:
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    else:
        exp_avg_sq.lerp_(g.square(), _weight(beta2, keep))


def factored_second_moment_(
    row: Tensor, col: Tensor, g: Tensor, beta2: float, keep: Tensor | None = None
) -> Tensor:
    """Adafactor-style second moment (the paper's "factorized" SOAP variant, Sec. 5).

    ``g`` is ``(B, m, n)``; ``row`` ``(B, m)`` and ``col`` ``(B, n)`` are EMAs of the row and
    column means of ``g^2``. Returns the rank-one estimate
    ``v_hat = row col^T / mean(row)`` of shape ``(B, m, n)``.
    """
    sq = g.square()
    k = keep.squeeze(-1) if keep is not None else None  # (B, 1, 1) -> (B, 1)
    ema_(row, sq.mean(dim=-1), beta2, k)
    ema_(col, sq.mean(dim=-2), beta2, k)
    scale = row.mean(dim=-1, keepdim=True).clamp_min(torch.finfo(row.dtype).tiny)
    return (row / scale).unsqueeze(-1) * col.unsqueeze(-2)


def soap_step_size(
    lr: float, beta1: float, beta2: float, step: int | Tensor, correct_bias: bool
) -> float | Tensor:
    """``lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` (reference bias correction), or ``lr``.

    ``step`` is a host int eagerly, the step-count tensor under ``torch.compile`` (then the
    result is a tensor too: no graph is specialised on the step)."""
    if not correct_bias:
        return lr
    return lr * (1.0 - beta2**step) ** 0.5 / (1.0 - beta1**step)


def normalize_rms(u: Tensor) -> Tensor:
    """Per-tensor RMS normalisation ``u / (1e-30 + rms(u))`` over all but the batch dim."""
    dims = tuple(range(1, u.dim()))
    return u / (1e-30 + u.square().mean(dim=dims, keepdim=True).sqrt())


def permute_along_(t: Tensor, dim: int, order: Tensor) -> None:
    """Reorder batched ``t`` along ``dim`` (>= 1) by per-batch indices ``order`` ``(B, d)``,
    in place (``t`` keeps its storage, so views of it stay valid)."""
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[dim] = t.shape[dim]
    idx = order.reshape(shape).expand_as(t)
    t.copy_(torch.gather(t, dim, idx))


# --------------------------------------------------------------------------------------
# Applying an update
# --------------------------------------------------------------------------------------
def apply_update_(
    targets: list[Tensor],
    plan: ShapePlan,
    update: Tensor,
    step_size: float | Tensor,
    decay: float,
    decay_first: bool,
    keep: Tensor | None,
) -> None:
    """``p -= step_size * update`` plus decoupled weight decay ``p -= decay * p``.

    ``decay_first`` selects torch AdamW's order (decay, then update); the SOAP reference
    decays after the update. With a mask ``keep`` both are scaled per tensor on the device.
    A tensor ``step_size`` (bias correction from the step-count tensor, under compile) is
    folded into the update, as the mask is.
    """
    if keep is None and isinstance(step_size, Tensor):
        update, step_size = update * step_size, 1.0
    if keep is None:
        ups = [
            from_working(u, plan).to(t.dtype)
            for u, t in zip(update.unbind(0), targets, strict=True)
        ]
        if decay_first and decay != 0.0:
            torch._foreach_add_(targets, targets, alpha=-decay)
        torch._foreach_add_(targets, ups, alpha=-step_size)
        if not decay_first and decay != 0.0:
            torch._foreach_add_(targets, targets, alpha=-decay)
        return
    scaled = update * (keep * -step_size)
    ups = [
        from_working(u, plan).to(t.dtype) for u, t in zip(scaled.unbind(0), targets, strict=True)
    ]
    shrink = (1.0 - decay * keep.flatten()).unbind(0)
    if decay_first and decay != 0.0:
        for t, s in zip(targets, shrink, strict=True):
            t.mul_(s)
    torch._foreach_add_(targets, ups)
    if not decay_first and decay != 0.0:
        for t, s in zip(targets, shrink, strict=True):
            t.mul_(s)


def apply_product_update_(
    targets: list[Tensor],
    plan: ShapePlan,
    a: Tensor,
    b: Tensor,
    step_size: float | Tensor,
    decay: float,
    decay_first: bool,
    keep: Tensor | None,
) -> None:
    """:func:`apply_update_` with ``update = a @ b`` (batched); for unmasked fp32 matrices
    the product, the step and the weight decay are one ``addmm`` per tensor (no
    temporary, two fewer passes over the parameter)."""
    fused = keep is None and plan.permute is None and len(plan.original) == 2
    fused = fused and not isinstance(step_size, Tensor)
    if fused and all(t.dtype == torch.float32 and t.is_contiguous() for t in targets):
        # decay after: (1 - d)(p - s u); decay first: (1 - d) p - s u.
        alpha = -step_size if decay_first else -(1.0 - decay) * step_size
        for t, ai, bi in zip(targets, a.unbind(0), b.unbind(0), strict=True):
            t.addmm_(ai, bi, beta=1.0 - decay, alpha=alpha)
        return
    apply_update_(targets, plan, a @ b, step_size, decay, decay_first, keep)
