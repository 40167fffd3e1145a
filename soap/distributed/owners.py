"""What the distributed mode needs from an optimizer (:class:`Distributable`), what every
topology offers (:class:`Distribution`), and the choice of owners and topology
(:func:`assign_owners`; :func:`soap.distributed.create` picks the topology)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from .collectives import device_of


class Distributable(Protocol):
    """An optimizer the distributed mode can spread over ranks: :class:`soap.SOAP`,
    :class:`soap.Shampoo`, :class:`soap.Muon` and :class:`soap.muon.AdamW`, all through
    :class:`soap._base.BucketedOptimizer`, which implements every member."""

    _name: str
    param_groups: list[dict[str, Any]]

    def param_cost(self, p: Tensor, group: dict[str, Any]) -> tuple[float, float]:
        """``(FLOPs per step, state bytes)`` of ``p``: what owners are balanced on."""
        ...

    def _buckets(self) -> Sequence[Any]:
        """This rank's buckets (of the parameters it owns) with ``.params``."""
        ...

    def _run(
        self,
        buckets: Sequence[Any],
        grads: list[list[Tensor]],
        targets: list[list[Tensor]],
        check: bool = True,
        after_bucket: Callable[[Any], None] | None = None,
    ) -> None:
        """Step ``buckets`` with full ``grads``, updating ``targets`` in place."""
        ...

    def _raise_on_nonfinite(self, pairs: list[tuple[Tensor, Tensor]]) -> None: ...

    def _param_name(self, p: Tensor) -> str: ...


def assign_owners(costs: list[tuple[float, float]], world: int) -> list[int]:
    """Owner rank of each item of ``costs`` = ``(flops, bytes)``: largest combined share first,
    onto the rank with the least load so far (ties: lowest rank). Deterministic, so every
    rank computes the same assignment without communicating."""
    tf = sum(c[0] for c in costs) or 1.0
    tb = sum(c[1] for c in costs) or 1.0
    share = [f / tf + b / tb for f, b in costs]
    load = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-share[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += share[i]
    return owners


class Distribution:
    """One owner per parameter on a process group; a subclass per topology implements the
    step's communication (:meth:`_step`) and says which gradients this rank checks."""

    def __init__(
        self, group: Any, rank: int, world: int, params: list[Tensor], owners: list[int]
    ) -> None:
        self.group, self.rank, self.world = group, rank, world
        self.params = params  # every parameter, in param-group order
        self.owner = {id(p): o for p, o in zip(params, owners, strict=True)}  # id -> rank
        self.comm_bytes_per_step = 0
        self._first = True

    def owns(self, p: Tensor) -> bool:
        return self.owner[id(p)] == self.rank

    def step(self, opt: Distributable, loss: Any) -> Any:
        active = [p for p in self.params if p.grad is not None]
        if self._first:
            self._check_first_step(opt, active)
            self._first = False
        self._raise_everywhere(opt, active)
        self._step(opt, active)
        return loss

    # ---- per topology -----------------------------------------------------------------
    def _check_first_step(self, opt: Distributable, active: list[Tensor]) -> None:
        """Checks that need the first gradients (none by default)."""

    def _checked_grads(self, active: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The (parameter, local gradient) pairs this rank checks for non-finite values."""
        raise NotImplementedError

    def _step(self, opt: Distributable, active: list[Tensor]) -> None:
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------
    def _raise_everywhere(self, opt: Distributable, active: list[Tensor]) -> None:
        """``nonfinite_grad='raise'``: every rank raises if any owner found a bad gradient."""
        if not any(g["nonfinite_grad"] == "raise" for g in opt.param_groups):
            return
        error = None
        try:
            opt._raise_on_nonfinite(self._checked_grads(active))
        except Exception as e:  # NonFiniteGradientError
            error = e
        flag = torch.tensor([1.0 if error else 0.0], device=device_of(self.params))
        dist.all_reduce(flag, group=self.group)
        if error is not None:
            raise error
        if flag.item():
            from ..nonfinite import NonFiniteGradientError

            raise NonFiniteGradientError(
                f"{opt._name}: non-finite gradient (NaN/inf) in a parameter owned by another "
                "rank (its message names it); optimizer state left untouched"
            )
