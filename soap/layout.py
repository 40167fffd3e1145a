"""How a parameter is seen by the preconditioner, and the names of its state.

A parameter of any shape is viewed in a *working shape* (channels-last 4-D tensors permuted to
channels-first, adjacent dimensions optionally merged, as in the reference SOAP); each working
dimension either has a Kronecker factor (``d x d``) or uses the identity (too large, e.g. a
vocabulary side, or a 1-D tensor without ``precondition_1d``). :class:`Layout` records both,
and every state name is built by the functions at the bottom of this module, nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "ShapePlan",
    "Layout",
    "plan_shape",
    "to_working",
    "from_working",
    "factor_key",
    "basis_key",
    "root_key",
    "is_root_key",
    "STEP",
]


@dataclass(frozen=True)
class ShapePlan:
    """``permute`` is applied first (channels_last 4-D tensors are moved to channels_first, as
    in the reference), then the tensor is reshaped to ``shape``."""

    original: tuple[int, ...]
    permute: tuple[int, ...] | None
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """A parameter's working shape and which of its dimensions are preconditioned.

    ``preconditioned[i]`` says whether working dimension ``i`` has a factor (and a basis or an
    inverse root); ``factored_second_moment`` selects SOAP's Adafactor-style second moment (the
    paper's factorized variant, 2-D working shapes only).
    """

    plan: ShapePlan
    preconditioned: tuple[bool, ...]
    factored_second_moment: bool = False
    # Shampoo's blocking of a too-large first dimension (DistributedShampoo): the parameter
    # (working plan ``full``) is ``blocks`` equal row blocks of shape ``plan.shape``, each with
    # its own factors, roots and grafting; the blocks are the bucket's batch dimension.
    blocks: int = 1
    full: ShapePlan | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.plan.shape

    @property
    def param_plan(self) -> ShapePlan:
        """The plan of the whole parameter (``plan`` itself unless blocked)."""
        return self.full or self.plan

    @property
    def any_preconditioned(self) -> bool:
        return any(self.preconditioned)

    def matmul_flops(self) -> int:
        """Matmul FLOPs of one SOAP step between refreshes (2 per multiply-add).

        Per preconditioned dimension ``d`` of a tensor with ``N`` entries: rotate in, rotate
        out and the factor update each cost ``2 N d`` (for an ``m x n`` matrix with both sides
        preconditioned this is the ``6mn(m+n)`` of the benchmark's floor).
        """
        n = 1
        for s in self.shape:
            n *= s
        per_block = sum(
            6 * n * d for d, has in zip(self.shape, self.preconditioned, strict=True) if has
        )
        return self.blocks * per_block

    def refresh_flops(self) -> int:
        """FLOPs of one basis refresh: ``L Q`` (``2d^3``), Householder QR without ``R``
        (``8/3 d^3``) and the first moment's change of basis (the cheaper of ``4Nd`` and
        ``2d^3 + 2Nd``, as :func:`soap.ops.soap_refresh_` chooses)."""
        n = 1
        for s in self.shape:
            n *= s
        return self.blocks * sum(
            2 * d**3 + 8 * d**3 // 3 + min(4 * n * d, 2 * d**3 + 2 * n * d)
            for d, has in zip(self.shape, self.preconditioned, strict=True)
            if has
        )


def _merge(shape: Sequence[int], max_precond_dim: int) -> tuple[int, ...]:
    """Merge adjacent dimensions while their product stays <= ``max_precond_dim``.

    Same greedy rule as the reference ``SOAP.merge_dims``: a dimension that alone exceeds the
    limit stays on its own (and later gets the identity).
    """
    new_shape: list[int] = []
    cur = 1
    for sh in shape:
        if cur * sh > max_precond_dim:
            if cur > 1:
                new_shape.append(cur)
                cur = sh
            else:
                new_shape.append(sh)
                cur = 1
        else:
            cur *= sh
    if cur > 1 or not new_shape:
        new_shape.append(cur)
    return tuple(new_shape)


def plan_shape(
    shape: Sequence[int], *, merge_dims: bool, max_precond_dim: int, data_format: str
) -> ShapePlan:
    """Working layout of a parameter of ``shape``; scalars are treated as shape ``(1,)``."""
    original = tuple(int(s) for s in shape)
    work = original if original else (1,)
    permute = None
    if data_format == "channels_last" and len(work) == 4:
        permute = (0, 3, 1, 2)
        work = tuple(work[i] for i in permute)
    if merge_dims and len(work) > 1:
        work = _merge(work, max_precond_dim)
    return ShapePlan(original=original, permute=permute, shape=tuple(work))


def unchanged_plan(shape: Sequence[int]) -> ShapePlan:
    """The working layout of an optimizer without preconditioners (Muon, AdamW): the
    parameter's own shape."""
    return plan_shape(shape, merge_dims=False, max_precond_dim=1, data_format="channels_first")


def to_working(t: Tensor, plan: ShapePlan) -> Tensor:
    """Parameter-shaped tensor -> working shape (no batch dimension)."""
    if plan.permute is not None:
        t = t.permute(plan.permute)
    return t.reshape(plan.shape)


def from_working(t: Tensor, plan: ShapePlan) -> Tensor:
    """Working-shaped tensor (no batch dimension) -> parameter shape."""
    if plan.permute is None:
        return t.reshape(plan.original)
    permuted = tuple(plan.original[i] for i in plan.permute)
    inverse = [0] * len(plan.permute)
    for i, p in enumerate(plan.permute):
        inverse[p] = i
    return t.reshape(permuted).permute(inverse)


# ---- state names (the only place they are spelled) --------------------------------------
STEP = "step"


def factor_key(dim: int) -> str:
    """EMA of the gradient contracted over every dimension but ``dim`` (``L``, ``R``)."""
    return f"factor_{dim}"


def basis_key(dim: int) -> str:
    """SOAP's eigenbasis ``Q`` of factor ``dim``."""
    return f"basis_{dim}"


def root_key(dim: int) -> str:
    """Shampoo's inverse root of factor ``dim``."""
    return f"root_{dim}"


def is_root_key(name: str) -> bool:
    return name.startswith("root_")
