"""Non-finite gradients: the finite screen and the ``nonfinite_grad="raise"`` error (the
``"skip"`` mask is applied on the device by the optimizers, :mod:`soap._base`).

Non-finite gradients (``nonfinite_grad``):

* ``"skip"`` (default): a parameter whose gradient has a NaN/inf is left exactly as it was -
  value, moments, factors and bases - while the others step. On accelerators and under
  ``torch.compile`` the decision is made on the device (a 0/1 mask folded into the EMA
  weights and the step size): no host synchronisation, no graph break. On CPU tensors, where
  reading a value costs nothing, one host check per step picks the unmasked fast path when
  every gradient is finite. The tensor's step counter still advances (it times the refreshes).
  ``skipped_updates`` counts the skipped parameter updates (a device tensor; read it when
  convenient, e.g. at evaluation).
* ``"raise"``: :class:`NonFiniteGradientError` naming the parameters, before any state is
  touched. This needs the answer on the host: one synchronisation per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class NonFiniteGradientError(RuntimeError):
    """A parameter received a NaN or infinite gradient."""


def finite_flags(tensors: list[Tensor]) -> Tensor:
    """Per tensor: is every entry finite? A NaN or inf entry makes the sum non-finite, and a
    sum reads the tensor once at full memory speed (an inf-norm is ~15x slower on CPU). A
    finite gradient whose fp32 sum overflows (entries around 1e30) counts as non-finite."""
    return torch.isfinite(torch.stack([t.sum() for t in tensors]))


def host_all_finite(grads: list[list[Tensor]]) -> bool:
    """True when a free host check shows every gradient finite (CPU, eager): then no mask is
    needed. Never reads a device value on an accelerator or under compile."""
    gs = [g for bg in grads for g in bg]
    if not gs or torch.compiler.is_compiling() or any(g.device.type != "cpu" for g in gs):
        return False
    return bool(finite_flags(gs).all())


def raise_on_nonfinite(
    checked: list[tuple[Tensor, Tensor]], owner: str, name_of: Callable[[Tensor], str]
) -> None:
    """Raise :class:`NonFiniteGradientError` naming every parameter of ``checked`` (pairs of
    parameter and gradient) whose gradient has a NaN/inf; one host synchronisation."""
    if not checked:
        return
    flags = finite_flags([g for _, g in checked])
    if bool(flags.all()):
        return
    bad = [p for (p, _), ok in zip(checked, flags.tolist(), strict=True) if not ok]
    names = ", ".join(name_of(p) for p in bad)
    raise NonFiniteGradientError(
        f"{owner}: non-finite gradient (NaN/inf) in {names}; optimizer state left untouched. "
        "Lower the learning rate or enable gradient clipping, or use nonfinite_grad='skip' to "
        "skip such updates."
    )
