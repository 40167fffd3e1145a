"""The periodic preconditioner refreshes, and the custom operators a compiled step runs them as.

SOAP re-estimates its eigenbases every ``precondition_frequency`` steps (Vyas et al. 2024,
Algorithm 1, with the paper's one power iteration + QR) and Shampoo recomputes its inverse
roots. Eagerly the optimizer reads the step count on the host and calls the refresh when due.
Under ``torch.compile`` that host decision would specialise the graph on the count
(:mod:`soap.stepcount`), so the compiled step calls a custom operator instead: one node in the
graph that receives the count tensor, decides at run time and refreshes in place. The maths
is the same function in both modes.

No ``from __future__ import annotations`` here: ``torch.library.custom_op`` reads the real
type hints to infer each operator's schema.
"""

import torch
from torch import Tensor

from . import functional as F
from .linalg import TF32_UNDER_COMPILE, cuda_tf32_enabled, inverse_root, refresh_basis


def soap_refresh_(
    buf: dict[str, Tensor],
    factors: list[Tensor | None],
    bases: list[Tensor | None],
    factored: bool,
) -> None:
    """Power iteration + QR per factor; permute the second moment by the new order and
    re-express the first moment (kept rotated) in the new basis.

    Along a dimension ``d`` of a tensor with ``N`` entries the first moment is either
    rotated out with ``Q_old`` and back in with ``Q_new^T`` (``4 N d`` FLOPs), or turned
    by the small ``Q_new^T Q_old`` (``2 d^3 + 2 N d``), whichever is cheaper: the second
    for vocabulary-sized matrices, whose ``N`` is far larger than ``d^2``.
    """
    exp_avg = buf["exp_avg"]
    n = exp_avg[0].numel()
    olds = [q.clone() if q is not None else None for q in bases]
    new_in: list[Tensor | None] = []
    for i, (f, q) in enumerate(zip(factors, bases, strict=True)):
        if f is None or q is None:
            new_in.append(None)
            continue
        q_new, order = refresh_basis(f, q)
        if factored:
            F.permute_along_(buf["exp_avg_sq_row" if i == 0 else "exp_avg_sq_col"], 1, order)
        else:
            F.permute_along_(buf["exp_avg_sq"], i + 1, order)
        q.copy_(q_new)
        d = q.shape[-1]
        # In: Q_new^T x, or (Q_new^T Q_old) x after no rotation out.
        new_in.append((olds[i].mT @ q) if d * d < n else q)  # type: ignore[union-attr]
        if d * d < n:
            olds[i] = None
    momentum = F.rotate(exp_avg, olds, transpose=False)  # out along the other dims
    exp_avg.copy_(F.rotate(momentum, new_in, transpose=True))


def shampoo_roots_(
    factors: list[Tensor | None],
    roots: list[Tensor | None],
    bc2: float,
    root: float,
    epsilon: float,
    keep: Tensor | None,
) -> None:
    """Each root ``(L / bc2 + eps I)^(-1/root)`` from its factor, in place; a tensor skipped for
    a non-finite gradient (``keep`` 0) keeps its root (its factor did not change)."""
    for f, r in zip(factors, roots, strict=True):
        if f is None or r is None:
            continue
        new = inverse_root(f / bc2, root, epsilon, r)
        if keep is not None:
            new = torch.where(keep.reshape(-1, 1, 1) > 0, new, r)
        r.copy_(new)


def moment_names(factored: bool) -> tuple[str, ...]:
    """SOAP's moment buffers: the first, then the second (factorized: its row and column)."""
    return (
        ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col") if factored else ("exp_avg", "exp_avg_sq")
    )


def _slots(dims: list[int], tensors: list[Tensor], n: int) -> list[Tensor | None]:
    out: list[Tensor | None] = [None] * n
    for d, t in zip(dims, tensors, strict=True):
        out[d] = t
    return out


@torch.library.custom_op("soap_bench::soap_refresh", mutates_args=("bases", "moments"))
def soap_refresh(
    step: Tensor,
    every: int,
    ndim: int,
    dims: list[int],
    factors: list[Tensor],
    bases: list[Tensor],
    moments: list[Tensor],
    factored: bool,
) -> None:
    """:func:`soap_refresh_` when ``step % every == 0`` (``step`` a CPU count tensor).
    ``dims`` are the preconditioned dimensions of the ``ndim``-dimensional working shape;
    ``moments`` the buffers named by :func:`moment_names`."""
    if int(step) % every != 0:
        return
    buf = dict(zip(moment_names(factored), moments, strict=True))
    soap_refresh_(buf, _slots(dims, factors, ndim), _slots(dims, bases, ndim), factored)


@soap_refresh.register_fake
def _(step, every, ndim, dims, factors, bases, moments, factored) -> None:  # noqa: ANN001
    return None


@torch.library.custom_op("soap_bench::shampoo_roots", mutates_args=("roots",))
def shampoo_roots(
    step: Tensor,
    start: int,
    every: int,
    beta2: float,
    factors: list[Tensor],
    roots: list[Tensor],
    root: float,
    epsilon: float,
    keep: Tensor | None,
) -> None:
    """:func:`shampoo_roots_` when ``step >= start`` and ``(step - start) % every == 0``."""
    n = int(step)
    if n < start or (n - start) % every != 0:
        return
    shampoo_roots_(list(factors), list(roots), 1.0 - beta2**n, root, epsilon, keep)


@shampoo_roots.register_fake
def _(step, start, every, beta2, factors, roots, root, epsilon, keep) -> None:  # noqa: ANN001
    return None


@torch.library.custom_op("soap_bench::require_fp32_matmuls", mutates_args=("count",))
def require_fp32_matmuls(count: Tensor) -> None:
    """Raise when CUDA matmuls would run in TF32 (:func:`soap.linalg.full_fp32` under
    compile). ``count`` is declared mutated only so the graph keeps this node: an operator
    without outputs or mutations is dead code to it."""
    if cuda_tf32_enabled():
        raise RuntimeError(TF32_UNDER_COMPILE)


@require_fp32_matmuls.register_fake
def _(count) -> None:  # noqa: ANN001
    return None
