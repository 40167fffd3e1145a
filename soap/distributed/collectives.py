"""Small helpers of the distributed mode (:mod:`soap.distributed`): the one ``DTensor`` check,
the flat all-gather under both of torch's names, and the shapes and devices its collectives
need."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_dtensor(t: Tensor) -> bool:
    """A ``torch.distributed.tensor.DTensor`` (by name: importing DTensor costs start-up)."""
    return type(t).__name__ == "DTensor"


def all_gather_flat(out: Tensor, inp: Tensor, group: Any, async_op: bool = False) -> Any:
    """One flat all-gather (``all_gather_single`` from torch 2.13; the older name before)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


def split_even(ps: list[Tensor], n: int) -> list[list[Tensor]]:
    """``ps`` in order, cut into ``n`` consecutive runs of about equal numel."""
    total = sum(p.numel() for p in ps)
    out: list[list[Tensor]] = [[] for _ in range(n)]
    seen = 0
    for p in ps:
        k = min(n - 1, int(n * seen / total)) if total else 0
        out[k].append(p)
        seen += p.numel()
    return out


def row_numel(p: Tensor) -> int:
    n = 1
    for s in tuple(p.shape)[1:]:
        n *= s
    return n


def device_of(ts: list[Tensor]) -> torch.device:
    for t in ts:
        return t.to_local().device if is_dtensor(t) else t.device
    return torch.device("cpu")
