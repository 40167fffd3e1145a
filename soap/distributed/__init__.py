"""Owner-computes distribution (ZeRO-1 style) of :class:`soap.SOAP`, :class:`soap.Shampoo` and
:class:`soap.Muon` across the ranks of a process group.

Replicating a preconditioned step on every rank multiplies its cost by nothing and its memory
by the world size: every rank runs every rotation, factor update and QR on the same numbers.
Here each parameter has one *owner* rank, chosen once so that every rank gets about the same
share of the work and of the state (greedy, largest first, onto the least-loaded rank; the
cost of a parameter is the optimizer's own estimate, :meth:`Distributable.param_cost` - for
SOAP its share of the step's FLOPs, ``m^3 + n^3 + 2m^2 n + 2mn^2`` per step for an ``m x n``
matrix in the paper's count - plus its share of the state bytes). Only the owner keeps that
parameter's state and computes its update. One class per topology, chosen once
(:func:`create`) behind one small interface (:class:`Distribution`):

* :class:`Replicated` - **DDP** (plain parameters, identical on every rank after the gradient
  all-reduce): owners step their parameters in place, and flat all-gathers (each rank's owned
  parameters cut into four rounds, a round started as soon as its parameters are stepped,
  overlapping the rest of the computation) give every rank every new value. Values travel in
  the parameters' own dtype, so the result is exactly what the owner computed. Before the
  first step one small all-gather checks that parameters and gradients really are replicated
  (a user's independent per-rank models would otherwise be silently mixed): it fails with a
  one-line message naming ``distributed='off'``.
* :class:`Sharded` - **FSDP2** (``DTensor`` parameters sharded ``Shard(0)`` on a 1-D mesh, as
  ``fully_shard`` makes them) and **HSDP** (``(Replicate(), Shard(0))`` on a replicate x
  shard mesh): one ``all_to_all_single`` brings every rank's shards of a parameter's gradient
  and value to its owner (in fp32, exact for fp32 and bf16), the owner steps the full matrix
  exactly as one process would, and a second ``all_to_all_single`` returns each rank its
  rows. Other placements (tensor parallelism) raise ``TypeError``.

Collectives per step: four per dtype (DDP) or two (FSDP2), whatever the number of parameters.
``comm_bytes_per_step`` says how many bytes this rank sends and receives.
"""

from __future__ import annotations

import torch.distributed as dist

from .collectives import all_gather_flat, is_dtensor
from .owners import Distributable, Distribution, assign_owners
from .replicated import Replicated
from .sharded import Sharded

__all__ = [
    "Distributable",
    "Distribution",
    "Replicated",
    "Sharded",
    "all_gather_flat",
    "assign_owners",
    "create",
    "is_dtensor",
]


def _world() -> tuple[object, int, int] | None:
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return dist.group.WORLD, dist.get_rank(), dist.get_world_size()


def create(opt: Distributable) -> Distribution | None:
    """The distribution for ``opt`` (:class:`~soap.distributed.Replicated` for plain
    parameters, :class:`~soap.distributed.Sharded` for FSDP2/HSDP ``DTensor`` parameters), or
    None when there is one process (nothing to do)."""
    w = _world()
    params = [p for g in opt.param_groups for p in g["params"]]
    dtensors = [is_dtensor(p) for p in params]
    if w is None:
        if any(dtensors):
            raise TypeError(
                f"{opt._name}: DTensor parameters but no process group with more than one "
                "rank: initialise torch.distributed before stepping"
            )
        return None
    group, rank, world = w
    if any(dtensors) and not all(dtensors):
        raise TypeError(
            f"{opt._name}: some parameters are DTensors and some are not: shard the whole "
            "model with fully_shard, or none of it"
        )
    costs = [opt.param_cost(p, g) for g in opt.param_groups for p in g["params"]]
    owners = assign_owners(costs, world)
    if dtensors and dtensors[0]:
        return Sharded(opt, group, rank, world, params, owners)
    return Replicated(group, rank, world, params, owners)
