"""Shampoo with layer-wise Adam grafting: the SOAP paper's baseline.

Vyas et al. (2024), arXiv 2409.11321, ran Shampoo through Meta's DistributedShampoo with
Adam grafting; this is the same algorithm for one device. For a gradient ``G`` of an
``m x n`` layer (``k`` factors for a ``k``-dimensional tensor):

.. math::

    L &\\leftarrow \\beta_2 L + (1-\\beta_2) G G^T, \\quad
    R \\leftarrow \\beta_2 R + (1-\\beta_2) G^T G                          \\\\
    \\hat M &= \\mathrm{EMA}_{\\beta_1}(G) / (1-\\beta_1^t), \\quad
    \\hat V = \\mathrm{EMA}_{\\beta_2}(G^2) / (1-\\beta_2^t)              \\\\
    A &= \\hat M / (\\sqrt{\\hat V} + \\epsilon_{graft})  \\quad\\text{(Adam, the grafting direction)} \\\\
    S &= (\\hat L + \\epsilon I)^{-1/r} \\hat M (\\hat R + \\epsilon I)^{-1/r},
        \\quad \\hat L = L / (1-\\beta_2^t)                              \\\\
    W &\\leftarrow (1 - \\eta\\lambda) W - \\eta \\, S \\, \\|A\\|_F / \\|S\\|_F

The inverse roots are recomputed every ``precondition_frequency`` steps from an fp32 ``eigh``
(fp64 retry; a failure keeps the previous root). Before ``start_preconditioning_step`` the
direction is ``A`` itself, i.e. Shampoo is exactly its grafting Adam. ``root=2.5`` is the
paper's tuned exponent ``-1/2.5`` for every factor; ``root=2`` is the "1/2 power" variant the
paper analyses (its Sec. 3), ``root=2k`` the classic Shampoo of a k-dimensional tensor.

A matrix whose first dimension exceeds ``max_preconditioner_dim`` (the vocabulary side of the
embeddings and of the output projection) is cut into equal row blocks, each preconditioned
and grafted on its own, as DistributedShampoo (the paper's Shampoo) blocks large tensors. An
earlier version used the identity on that side instead (as SOAP does, per the paper); with
per-tensor grafting that one-sided direction concentrated the step on the rows of frequent
tokens and made the loss spike after every root refresh at small scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from ._base import Bucket, BucketedOptimizer
from ._validate import _check, check_bools, check_positive_int, validate_common
from .layout import STEP, Layout, ShapePlan, factor_key, is_root_key, root_key
from .linalg import full_fp32
from .ops import shampoo_roots, shampoo_roots_

__all__ = ["Shampoo"]


def block_size(m: int, max_dim: int) -> int | None:
    """Rows per block when a first dimension ``m > max_dim`` is cut into equal blocks: the
    largest divisor of ``m`` not above ``max_dim`` (with 1024: 32100 -> 50 blocks of 642;
    4096 -> 4 of 1024), or None when only tiny blocks divide it (below ``max_dim / 8``: the identity is
    used for that dimension instead)."""
    for size in range(max_dim, max(1, max_dim // 8) - 1, -1):
        if m % size == 0:
            return size
    return None


def _tensor_norm(x: Tensor) -> Tensor:
    """Frobenius norm of each tensor of a batch, shaped for broadcasting."""
    dims = tuple(range(1, x.dim()))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


class Shampoo(BucketedOptimizer):
    """Shampoo (``torch.optim.Optimizer``) with layer-wise Adam grafting.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: ``(beta1, beta2)``: ``beta1`` filters the gradient, ``beta2`` is the EMA rate of
            the factors and of the grafting second moment.
        epsilon: added to each factor before its inverse root (DistributedShampoo: 1e-12).
        weight_decay: decoupled, ``p *= 1 - lr * wd`` before the update (AdamW order).
        precondition_frequency: steps between inverse-root recomputations.
        start_preconditioning_step: first step that uses Shampoo's direction (earlier steps
            are pure grafting Adam); ``None`` means ``precondition_frequency``, as in
            DistributedShampoo.
        root: each factor's inverse root (``2.5`` paper, ``2`` the 1/2-power variant).
        max_preconditioner_dim: the largest factor. A matrix's larger first dimension (a
            vocabulary side) is cut into equal row blocks (``blocking``, DistributedShampoo's
            behaviour), each with its own factors, roots and grafting norm; other too-large
            dimensions use the identity.
        blocking: cut too-large first dimensions into blocks (default) rather than use the
            identity (one-sided Shampoo, which with per-tensor grafting destabilises
            vocabulary matrices: the grafted norm concentrates on frequent tokens' rows).
        block_size: the most rows per block (also capped by ``max_preconditioner_dim``);
            DistributedShampoo's default block is 1024. Without this cap a 32100-row
            vocabulary with ``max_preconditioner_dim=10000`` would get 4 blocks of 8025 rows,
            whose 8025^2 factors cost minutes of eigh per refresh.
        merge_dims: merge adjacent small dimensions (as in SOAP).
        precondition_1d: give 1-D tensors a factor (the paper preconditions them too).
        graft_eps: epsilon of the grafting Adam.
        foreach, nonfinite_grad, distributed: as in :class:`soap.SOAP`.
    """

    _name = "Shampoo"
    _max_dim_key = "max_preconditioner_dim"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        epsilon: float = 1e-12,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        start_preconditioning_step: int | None = None,
        root: float = 2.5,
        max_preconditioner_dim: int = 10000,
        merge_dims: bool = False,
        blocking: bool = True,
        block_size: int = 1024,
        precondition_1d: bool = True,
        graft_eps: float = 1e-8,
        data_format: str = "channels_first",
        *,
        foreach: bool = True,
        nonfinite_grad: str = "skip",
        distributed: str = "auto",
    ) -> None:
        if start_preconditioning_step is None:
            start_preconditioning_step = precondition_frequency
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            epsilon=epsilon,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step,
            root=root,
            max_preconditioner_dim=max_preconditioner_dim,
            merge_dims=merge_dims,
            blocking=blocking,
            block_size=block_size,
            precondition_1d=precondition_1d,
            graft_eps=graft_eps,
            data_format=data_format,
            foreach=foreach,
            nonfinite_grad=nonfinite_grad,
            distributed=distributed,
        )
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        validate_common(group, "Shampoo")
        _check(
            group["epsilon"] > 0.0, f"Shampoo: invalid epsilon={group['epsilon']!r} (must be > 0)"
        )
        _check(
            group["graft_eps"] > 0.0,
            f"Shampoo: invalid graft_eps={group['graft_eps']!r} (must be > 0)",
        )
        _check(group["root"] > 0.0, f"Shampoo: invalid root={group['root']!r} (must be > 0)")
        check_positive_int(group, "start_preconditioning_step", "Shampoo")
        check_positive_int(group, "max_preconditioner_dim", "Shampoo")
        check_positive_int(group, "block_size", "Shampoo")
        check_bools(group, ("merge_dims", "precondition_1d", "foreach", "blocking"), "Shampoo")

    def _layout(self, p: Tensor, group: dict[str, Any]) -> Layout:
        plan = self._plan(p, group)
        mpd = group["max_preconditioner_dim"]
        if len(plan.shape) == 1:
            return Layout(plan, (group["precondition_1d"] and plan.shape[0] <= mpd,))
        m = plan.shape[0]
        if group["blocking"] and len(plan.shape) == 2 and m > mpd:
            size = block_size(m, min(mpd, group["block_size"]))
            if size is not None:
                block = ShapePlan((size, plan.shape[1]), None, (size, plan.shape[1]))
                return Layout(block, (True, plan.shape[1] <= mpd), blocks=m // size, full=plan)
        return Layout(plan, tuple(d <= mpd for d in plan.shape))

    def _extra_flops(self, layout: Layout, group: dict[str, Any]) -> float:
        """Rotations and factor updates every step, a refresh every ``precondition_frequency``
        steps (:meth:`soap.layout.Layout.matmul_flops`, :meth:`~soap.layout.Layout.refresh_flops`)."""
        return layout.matmul_flops() + layout.refresh_flops() / group["precondition_frequency"]

    def _state_spec(self, layout: Layout) -> dict[str, tuple[int, ...]]:
        spec: dict[str, tuple[int, ...]] = {"exp_avg": layout.shape, "graft_sq": layout.shape}
        for i, d in enumerate(layout.shape):
            if layout.preconditioned[i]:
                spec[factor_key(i)] = (d, d)
                spec[root_key(i)] = (d, d)
        return spec

    def _init_state(self, name: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
        if is_root_key(name):
            return torch.eye(shape[0], dtype=torch.float32, device=device)
        return super()._init_state(name, shape, device)

    def _step_bucket(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad: Tensor,
        keep: Tensor | None,
        targets: list[Tensor],
    ) -> None:
        layout, buf, params = bucket.layout, bucket.buffers, bucket.params
        beta1, beta2 = group["betas"]
        dims = range(len(layout.shape))
        factors = [buf.get(factor_key(i)) for i in dims]
        roots = [buf.get(root_key(i)) for i in dims]
        step = self._advance(params)

        with full_fp32(grad.device, self.state[params[0]][STEP]):
            F.update_factors_(factors, grad, beta2, keep)
            F.adam_moments_(buf["exp_avg"], buf["graft_sq"], grad, beta1, beta2, keep)
            bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
            m_hat = buf["exp_avg"] / bc1
            adam = m_hat / (buf["graft_sq"] / bc2).sqrt().add_(group["graft_eps"])
            start = group["start_preconditioning_step"]
            if layout.any_preconditioned:
                direction = self._direction(group, step, start, factors, roots, m_hat, adam, keep)
            else:
                direction = adam
            self._apply_update(
                targets,
                layout.plan,
                direction,
                group["lr"],
                group["lr"] * group["weight_decay"],
                decay_first=True,
                keep=keep,
            )

    @staticmethod
    def _direction(
        group: dict[str, Any],
        step: int | Tensor,
        start: int,
        factors: list[Tensor | None],
        roots: list[Tensor | None],
        m_hat: Tensor,
        adam: Tensor,
        keep: Tensor | None,
    ) -> Tensor:
        """From ``start_preconditioning_step`` on: the roots refreshed every
        ``precondition_frequency`` steps and Shampoo's direction grafted to Adam's norm;
        before it, Adam's. Eagerly decided on the host; under compile the roots' refresh is
        a custom operator and the choice a ``where`` on the count (:mod:`soap.ops`)."""
        beta2, every = group["betas"][1], group["precondition_frequency"]
        if not isinstance(step, Tensor):
            if step < start:
                return adam
            if (step - start) % every == 0:
                bc2 = 1.0 - beta2**step
                shampoo_roots_(factors, roots, bc2, group["root"], group["epsilon"], keep)
        else:
            dims = [i for i, f in enumerate(factors) if f is not None]
            shampoo_roots(
                step,
                start,
                every,
                beta2,
                [factors[i] for i in dims],  # type: ignore[misc]
                [roots[i] for i in dims],  # type: ignore[misc]
                float(group["root"]),
                float(group["epsilon"]),
                keep,
            )
        shampoo = F.rotate(m_hat, roots, transpose=True)
        scale = _tensor_norm(adam) / _tensor_norm(shampoo).clamp_min(1e-30)
        if not isinstance(step, Tensor):
            return shampoo * scale
        return torch.where(step.to(adam.device) >= start, shampoo * scale, adam)
