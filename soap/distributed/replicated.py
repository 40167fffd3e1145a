"""DDP: every rank holds every parameter; owners step theirs, then all-gathers share them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .collectives import all_gather_flat, device_of, split_even
from .owners import Distributable, Distribution

ROUNDS = 4  # all-gathers per step and dtype, overlapping the owners' computation


@dataclass
class _Round:
    dtype: torch.dtype
    per_rank: list[list[Tensor]]
    width: int


class Replicated(Distribution):
    """Plain (replicated) parameters, as under ``DistributedDataParallel``."""

    def _check_first_step(self, opt: Distributable, active: list[Tensor]) -> None:
        """Parameters and gradients must be one data-parallel model: one small all-gather of
        their sums, before the first step."""
        dev = device_of(self.params)
        stats = (
            torch.stack(
                [torch.stack([p.detach().double().sum(), p.grad.double().sum()]) for p in active]
            ).flatten()
            if active
            else torch.zeros(2, dtype=torch.float64, device=dev)
        )
        out = torch.empty(self.world * stats.numel(), dtype=stats.dtype, device=stats.device)
        all_gather_flat(out, stats, group=self.group)
        per_rank = out.view(self.world, -1)
        if not torch.allclose(per_rank, per_rank[0].expand_as(per_rank), rtol=1e-6, atol=1e-9):
            raise ValueError(
                f"{opt._name}(distributed='auto'): parameters or gradients differ across the "
                f"{self.world} ranks, so they are not one data-parallel model (DDP): wrap the "
                "model in DistributedDataParallel, or pass distributed='off' for independent "
                "models"
            )

    def _checked_grads(self, active: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return [(p, p.grad) for p in active if self.owns(p)]

    def _rounds(self, active: list[Tensor]) -> list[_Round]:
        """Each rank's owned parameters (per dtype) cut into ``ROUNDS`` runs of about equal
        size; round ``k`` of every rank travels in the ``k``-th all-gather."""
        out = []
        dtypes = sorted({p.dtype for p in active}, key=str)
        for dtype in dtypes:
            ps = [p for p in active if p.dtype == dtype]
            chunks = [
                split_even([p for p in ps if self.owner[id(p)] == r], ROUNDS)
                for r in range(self.world)
            ]
            for k in range(ROUNDS):
                per_rank = [chunks[r][k] for r in range(self.world)]
                width = max(sum(p.numel() for p in rp) for rp in per_rank)
                if width:
                    out.append(_Round(dtype, per_rank, width))
        return out

    def _step(self, opt: Distributable, active: list[Tensor]) -> None:
        """Owners step their buckets in round order; as soon as a round of this rank's
        parameters is done its all-gather starts (asynchronously), so communication overlaps
        the remaining computation. Every rank launches the rounds in the same order."""
        rounds = self._rounds(active)
        round_of = {id(p): k for k, rd in enumerate(rounds) for p in rd.per_rank[self.rank]}
        buckets = sorted(opt._buckets(), key=lambda b: min(round_of[id(p)] for p in b.params))
        pending = [len(rd.per_rank[self.rank]) for rd in rounds]
        launched: list[tuple[Tensor, Any]] = []

        def launch_ready(_bucket: Any = None) -> None:
            if _bucket is not None:
                for p in _bucket.params:
                    pending[round_of[id(p)]] -= 1
            while len(launched) < len(rounds) and pending[len(launched)] == 0:
                rd = rounds[len(launched)]
                mine = rd.per_rank[self.rank]
                dev = device_of(self.params)
                flat = torch.zeros(rd.width, dtype=rd.dtype, device=dev)
                if mine:
                    n = sum(p.numel() for p in mine)
                    torch.cat([p.detach().reshape(-1) for p in mine], out=flat[:n])
                out = torch.empty(self.world * rd.width, dtype=rd.dtype, device=dev)
                launched.append((out, all_gather_flat(out, flat, self.group, async_op=True)))

        launch_ready()
        opt._run(
            buckets,
            [[p.grad for p in b.params] for b in buckets],
            [b.params for b in buckets],
            check=False,
            after_bucket=launch_ready,
        )
        launch_ready()
        sent = 0
        for rd, (out, handle) in zip(rounds, launched, strict=True):
            handle.wait()
            for r, rp in enumerate(rd.per_rank):
                if r == self.rank or not rp:
                    continue
                seg = out[r * rd.width : r * rd.width + sum(p.numel() for p in rp)]
                vals = torch.split(seg, [p.numel() for p in rp])
                torch._foreach_copy_(
                    [p.detach() for p in rp], [v.view_as(p) for v, p in zip(vals, rp, strict=True)]
                )
            sent += (self.world - 1) * rd.width * out.element_size() * 2  # ring: send + receive
        self.comm_bytes_per_step = sent
