"""SOAP: ShampoO with Adam in the Preconditioner's eigenbasis.

Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade (2024),
"SOAP: Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321, Algorithm 3.

For a gradient ``G_t`` of an ``m x n`` layer, with factors ``L``, ``R`` and their
eigenbases ``Q_L``, ``Q_R``:

.. math::

    G'_t &= Q_L^T G_t Q_R                                     \\
    M_t  &= \\beta_1 M_{t-1} + (1-\\beta_1) G'_t   \\quad (\\text{kept in the rotated basis}) \\
    V_t  &= \\beta_2 V_{t-1} + (1-\\beta_2) G'^2_t                 \\
    W_t  &= W_{t-1} - \\eta \\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}
            Q_L \\frac{M_t}{\\sqrt{V_t} + \\epsilon} Q_R^T - \\eta \\lambda W_{t-1}' \\\\
    L &\\leftarrow \\beta_s L + (1-\\beta_s) G_t G_t^T, \\quad
    R \\leftarrow \\beta_s R + (1-\\beta_s) G_t^T G_t

and every ``precondition_frequency`` steps ``Q`` is refreshed by one power-iteration step and
QR (after sorting its columns by ``diag(Q^T L Q)``, with ``V`` permuted alike); ``M`` is then
re-expressed in the new basis. The factors are updated *after* the parameter update, so the
basis never contains the gradient it is applied to. The first step of each tensor only
accumulates the factors and computes ``Q`` by ``eigh`` (no update, no decay), exactly as in
the public reference implementation (github.com/nikhilvyas/SOAP); that holds for tensors
with no factor too (1-D tensors, vocabulary-sized dimensions), which are then plain Adam in
the original basis from the second step on.

State memory per ``m x n`` layer in floats, counting the gradient (paper, Sec. 5):

=============================  ==================================
variant                        floats
=============================  ==================================
SOAP                           ``2m^2 + 2n^2 + 3mn``
one-sided (``one_sided``)      ``2 min(m,n)^2 + 3mn``
one-sided + ``factorized``     ``2 min(m,n)^2 + 2mn + (m + n)``
=============================  ==================================

(the paper drops the ``m + n`` of the factored second moment as lower order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from ._base import Bucket, BucketedOptimizer
from ._validate import _check, check_bools, check_positive_int, validate_common
from .layout import STEP, Layout, basis_key, factor_key
from .linalg import eigenbasis, full_fp32
from .ops import moment_names, soap_refresh, soap_refresh_

__all__ = ["SOAP"]


def _last_matmul(direction: Tensor, bases: list[Tensor | None]) -> tuple[Tensor, Tensor] | None:
    """``(a, b)`` with ``a @ b == Q_L D Q_R^T`` for a matrix with a basis, else ``None``."""
    if direction.dim() != 3 or len(bases) != 2 or (bases[0] is None and bases[1] is None):
        return None
    ql, qr = bases
    if ql is None:
        return direction, qr.mT
    return ql, (direction @ qr.mT if qr is not None else direction)


def _adam_direction(
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    keep: Tensor | None,
    out: Tensor | None = None,
) -> Tensor:
    """Update the moments in place and return ``M / (sqrt(V) + eps)`` (in ``out`` if given)."""
    F.adam_moments_(exp_avg, exp_avg_sq, grad, beta1, beta2, keep)
    denom = torch.sqrt(exp_avg_sq, out=out) if out is not None else exp_avg_sq.sqrt()
    denom.add_(eps)
    return torch.div(exp_avg, denom, out=denom)


class SOAP(BucketedOptimizer):
    """SOAP optimizer (``torch.optim.Optimizer``), drop-in for the reference ``SOAP``.

    Args (reference names and defaults):
        params: parameters or parameter groups (named parameters are accepted; the names are
            used in error messages).
        lr: learning rate.
        betas: ``(beta1, beta2)`` of Adam in the rotated basis.
        shampoo_beta: EMA rate of the factors; ``-1`` uses ``beta2``.
        eps: added to ``sqrt(V)``.
        weight_decay: decoupled, applied after the update as ``p -= lr * wd * p``.
        precondition_frequency: steps between eigenbasis refreshes.
        max_precond_dim: dimensions larger than this get no factor (identity rotation).
        merge_dims: merge adjacent dimensions while their product is <= ``max_precond_dim``.
        precondition_1d: give 1-D tensors a factor too (otherwise they run plain Adam).
        normalize_grads: RMS-normalise each tensor's update.
        data_format: ``"channels_first"`` or ``"channels_last"`` (4-D tensors are permuted to
            channels-first before merging).
        correct_bias: Adam bias correction ``sqrt(1-beta2^t)/(1-beta1^t)``.

    Extensions (keyword-only):
        one_sided: rotate only the smallest eligible dimension (paper's one-sided variant).
        factorized: Adafactor-style factored second moment for tensors whose working shape is
            2-D (paper's factorized variant); other tensors keep a full second moment.
        foreach: batch tensors of equal shape (default); ``False`` runs the plain per-tensor
            path. Both give the same numbers.
        nonfinite_grad: ``"skip"`` (default) leaves a parameter with a NaN/inf gradient and
            its state untouched, decided on the device (no host synchronisation); ``"raise"``
            raises :class:`soap.NonFiniteGradientError` naming it (one synchronisation per
            step). See :mod:`soap._base`.
        compile: ``torch.compile`` the per-step elementwise Adam maths.
        distributed: ``"auto"`` (default) shards state and work across ranks when a process
            group with more than one rank is initialised (DDP: each parameter's owner steps
            it and the new values are all-gathered; FSDP2 ``DTensor`` parameters: the owner
            steps the full matrix and sends the shards back); ``"off"`` steps every parameter
            on every rank (and refuses ``DTensor`` parameters). See :mod:`soap.distributed`.
    """

    _name = "SOAP"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        data_format: str = "channels_first",
        correct_bias: bool = True,
        *,
        one_sided: bool = False,
        factorized: bool = False,
        foreach: bool = True,
        nonfinite_grad: str = "skip",
        compile: bool = False,
        distributed: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (list, tuple)) else betas,
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            merge_dims=merge_dims,
            precondition_1d=precondition_1d,
            normalize_grads=normalize_grads,
            data_format=data_format,
            correct_bias=correct_bias,
            one_sided=one_sided,
            factorized=factorized,
            foreach=foreach,
            nonfinite_grad=nonfinite_grad,
            compile=compile,
            distributed=distributed,
        )
        self._compiled: Any = None
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        validate_common(group, "SOAP")
        sb = group["shampoo_beta"]
        _check(
            sb == -1 or 0.0 <= sb < 1.0,
            f"SOAP: invalid shampoo_beta={sb!r} (use -1 or a value in [0, 1))",
        )
        _check(group["eps"] > 0.0, f"SOAP: invalid eps={group['eps']!r} (must be > 0)")
        check_positive_int(group, "max_precond_dim", "SOAP")
        check_bools(
            group,
            (
                "merge_dims",
                "precondition_1d",
                "normalize_grads",
                "correct_bias",
                "one_sided",
                "factorized",
                "foreach",
                "compile",
            ),
            "SOAP",
        )

    # ---- layout -------------------------------------------------------------------------
    def _layout(self, p: Tensor, group: dict[str, Any]) -> Layout:
        plan = self._plan(p, group)
        shape, mpd = plan.shape, group["max_precond_dim"]
        if len(shape) == 1:
            has = (group["precondition_1d"] and shape[0] <= mpd,)
        else:
            has = tuple(d <= mpd for d in shape)
            if group["one_sided"] and any(has):
                smallest = min((d, i) for i, d in enumerate(shape) if has[i])[1]
                has = tuple(i == smallest for i in range(len(shape)))
        return Layout(plan, has, group["factorized"] and len(shape) == 2)

    def _extra_flops(self, layout: Layout, group: dict[str, Any]) -> float:
        """Rotations and factor updates every step, a refresh every ``precondition_frequency``
        steps (:meth:`soap.layout.Layout.matmul_flops`, :meth:`~soap.layout.Layout.refresh_flops`)."""
        return layout.matmul_flops() + layout.refresh_flops() / group["precondition_frequency"]

    def _state_spec(self, layout: Layout) -> dict[str, tuple[int, ...]]:
        spec: dict[str, tuple[int, ...]] = {"exp_avg": layout.shape}
        if layout.factored_second_moment:
            spec["exp_avg_sq_row"] = (layout.shape[0],)
            spec["exp_avg_sq_col"] = (layout.shape[1],)
        else:
            spec["exp_avg_sq"] = layout.shape
        for i, d in enumerate(layout.shape):
            if layout.preconditioned[i]:
                spec[factor_key(i)] = (d, d)
                spec[basis_key(i)] = (d, d)
        return spec

    # ---- the step -----------------------------------------------------------------------
    def _direction_fn(self, group: dict[str, Any]):
        if not group["compile"]:
            return _adam_direction
        if self._compiled is None:
            self._compiled = torch.compile(_adam_direction, dynamic=True)
        return self._compiled

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
        shampoo_beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else beta2
        dims = range(len(layout.shape))
        factors = [buf.get(factor_key(i)) for i in dims]
        bases = [buf.get(basis_key(i)) for i in dims]

        with full_fp32(grad.device, self.state[params[0]][STEP]):
            if bucket.first:
                # Step 1 only accumulates the factors and computes their eigenvectors.
                F.update_factors_(factors, grad, shampoo_beta, keep)
                for f, q in zip(factors, bases, strict=True):
                    if f is not None:
                        q.copy_(eigenbasis(f))
                return

            step = self._advance(params)
            work = None if group["compile"] else self._scratch("work", grad.shape, grad)
            g_rot = F.rotate(grad, bases, transpose=True, out=work)
            exp_avg = buf["exp_avg"]
            if layout.factored_second_moment:
                F.ema_(exp_avg, g_rot, beta1, keep)
                v = F.factored_second_moment_(
                    buf["exp_avg_sq_row"], buf["exp_avg_sq_col"], g_rot, beta2, keep
                )
                direction = exp_avg / v.sqrt().add_(group["eps"])
            else:
                fn = self._direction_fn(group)
                direction = fn(exp_avg, buf["exp_avg_sq"], g_rot, beta1, beta2, group["eps"], keep)
            decay = group["lr"] * group["weight_decay"]
            step_size = F.soap_step_size(group["lr"], beta1, beta2, step, group["correct_bias"])
            last = _last_matmul(direction, bases) if not group["normalize_grads"] else None
            if last is not None:  # the rotation back ends in one matmul: fuse it with the step
                self._apply_product_update(
                    targets, layout.plan, *last, step_size, decay, False, keep
                )
            else:
                update = F.rotate(direction, bases, transpose=False)
                if group["normalize_grads"]:
                    update = F.normalize_rms(update)
                self._apply_update(
                    targets, layout.plan, update, step_size, decay, decay_first=False, keep=keep
                )

            # After the update: fold this gradient into the factors, then maybe refresh.
            F.update_factors_(factors, grad, shampoo_beta, keep)
            if layout.any_preconditioned:
                self._maybe_refresh(group, layout, buf, factors, bases, step)

    @staticmethod
    def _maybe_refresh(
        group: dict[str, Any],
        layout: Layout,
        buf: dict[str, Tensor],
        factors: list[Tensor | None],
        bases: list[Tensor | None],
        step: int | Tensor,
    ) -> None:
        """Refresh the eigenbases every ``precondition_frequency`` steps: decided on the host
        eagerly, inside a custom operator under compile (:mod:`soap.ops`)."""
        every, factored = group["precondition_frequency"], layout.factored_second_moment
        if not isinstance(step, Tensor):
            if step % every == 0:
                soap_refresh_(buf, factors, bases, factored)
            return
        dims = [i for i, f in enumerate(factors) if f is not None]
        soap_refresh(
            step,
            every,
            len(factors),
            dims,
            [factors[i] for i in dims],
            [bases[i] for i in dims],
            [buf[n] for n in moment_names(factored)],
            factored,
        )
