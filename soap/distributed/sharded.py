"""FSDP2 and HSDP: ``DTensor`` shards travel to their owner, which steps the full tensor
exactly as one process would; each rank gets its rows back."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .collectives import all_gather_flat, device_of, row_numel
from .owners import Distributable, Distribution


class Sharded(Distribution):
    """``DTensor`` parameters: FSDP2's ``Shard(0)`` on a 1-D mesh, or HSDP's
    ``(Replicate(), Shard(0))`` on a replicate x shard mesh spanning the world."""

    def __init__(
        self,
        opt: Distributable,
        group: Any,
        rank: int,
        world: int,
        params: list[Tensor],
        owners: list[int],
    ) -> None:
        super().__init__(group, rank, world, params, owners)
        self._rows: dict[int, list[int]] = {}  # id(param) -> dim-0 rows per rank
        self._shard_rows: dict[int, list[int]] = {}  # ... and per shard index
        self._where: list[tuple[int, int]] = []  # rank -> (replica, shard)
        self._check_placements(opt)

    def _checked_grads(self, active: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return [(p, p.grad.to_local()) for p in active]  # every rank checks its shards

    def _step(self, opt: Distributable, active: list[Tensor]) -> None:
        buckets = opt._buckets()
        grads, values = self._gather_to_owners(active)
        opt._run(
            buckets,
            [[grads[id(p)] for p in b.params] for b in buckets],
            [[values[id(p)] for p in b.params] for b in buckets],
            check=False,
        )
        self._scatter_from_owners(active, values)

    def _check_placements(self, opt: Distributable) -> None:
        """FSDP2 (``Shard(0)`` on a 1-D mesh) or HSDP (``(Replicate(), Shard(0))`` on a 2-D
        replicate x shard mesh), the mesh spanning the world. Records, per rank, its replica
        and shard index, and per parameter the dim-0 rows of each rank and of each shard."""
        from torch.distributed.tensor import Replicate, Shard

        mesh = self.params[0].device_mesh
        ok = {1: (Shard(0),), 2: (Replicate(), Shard(0))}
        for p in self.params:
            if p.device_mesh != mesh or tuple(p.placements) != ok.get(mesh.ndim):
                raise TypeError(
                    f"{opt._name}: parameter {opt._param_name(p)} is a DTensor with placements "
                    f"{tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh; the distributed "
                    "mode supports FSDP2's Shard(0) on one mesh and HSDP's (Replicate(), "
                    "Shard(0)) on a replicate x shard mesh, the same mesh for every parameter "
                    "(no tensor parallelism)"
                )
        grid = mesh.mesh.reshape(-1, mesh.mesh.shape[-1]).tolist()  # (replicas, shards)
        if sorted(r for row in grid for r in row) != list(range(self.world)):
            raise TypeError(
                f"{opt._name}: the parameters' device mesh {grid} does not span the "
                f"{self.world} ranks of the default process group; shard over all of them"
            )
        self._where = [(0, 0)] * self.world
        for i, row in enumerate(grid):
            for j, r in enumerate(row):
                self._where[r] = (i, j)
        # On the parameters' device: NCCL (the trainer's only backend on CUDA) takes no CPU
        # tensors, where gloo takes any.
        dev = device_of(self.params)
        local = torch.tensor(
            [p.to_local().shape[0] for p in self.params], dtype=torch.int64, device=dev
        )
        out = torch.empty(self.world * local.numel(), dtype=torch.int64, device=dev)
        all_gather_flat(out, local, group=self.group)
        rows = out.view(self.world, -1)
        for i, p in enumerate(self.params):
            self._rows[id(p)] = rows[:, i].tolist()
            self._shard_rows[id(p)] = [self._rows[id(p)][r] for r in grid[0]]

    def _sources(self, owner: int) -> list[int]:
        """The ranks that send their shards to ``owner``: those of its replica, in shard
        order (every replica holds the same values and, after HSDP's all-reduce, the same
        gradients, so one replica's shards make the full tensor)."""
        rep = self._where[owner][0]
        mine = [r for r in range(self.world) if self._where[r][0] == rep]
        return sorted(mine, key=lambda r: self._where[r][1])

    def _gather_to_owners(
        self, active: list[Tensor]
    ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Send every local (grad, value) shard to its owner; return full (grad, value) of the
        parameters this rank owns (fp32)."""
        dev = device_of(self.params)  # not active's: it may be empty
        rep = self._where[self.rank][0]
        send = [[] for _ in range(self.world)]
        for p in active:
            owner = self.owner[id(p)]
            if self._where[owner][0] != rep:  # the owner's replica sends (HSDP)
                continue
            g = p.grad.to_local().reshape(-1).float()
            v = p.detach().to_local().reshape(-1).float()
            send[owner] += [g, v]
        in_sizes = [sum(t.numel() for t in s) for s in send]
        mine = [p for p in active if self.owns(p)]
        sources = self._sources(self.rank)
        out_sizes = [
            sum(2 * self._rows[id(p)][r] * row_numel(p) for p in mine) if r in sources else 0
            for r in range(self.world)
        ]
        inp = (
            torch.cat([t for s in send for t in s]) if any(in_sizes) else torch.zeros(0, device=dev)
        )
        out = torch.empty(sum(out_sizes), device=dev)
        dist.all_to_all_single(out, inp, out_sizes, in_sizes, group=self.group)
        grads, values = {}, {}
        pieces = torch.split(out, out_sizes)
        cursor = [0] * self.world
        gparts: dict[int, list[Tensor]] = {id(p): [] for p in mine}
        vparts: dict[int, list[Tensor]] = {id(p): [] for p in mine}
        for r in sources:  # shard order
            for p in mine:
                n = self._rows[id(p)][r] * row_numel(p)
                c = cursor[r]
                gparts[id(p)].append(pieces[r][c : c + n])
                vparts[id(p)].append(pieces[r][c + n : c + 2 * n])
                cursor[r] = c + 2 * n
        for p in mine:
            shape = tuple(p.shape)
            # Back in the parameters' dtypes (exact): the owner then runs the very operations
            # of one process, rounding included (a bf16 update is added to a bf16 value).
            grads[id(p)] = torch.cat(gparts[id(p)]).view(shape).to(p.grad.dtype)
            values[id(p)] = torch.cat(vparts[id(p)]).view(shape).to(p.dtype)
        self.comm_bytes_per_step = 4 * (sum(in_sizes) + sum(out_sizes))
        return grads, values

    def _scatter_from_owners(self, active: list[Tensor], values: dict[int, Tensor]) -> None:
        dev = device_of(self.params)  # not active's: it may be empty
        mine = [p for p in active if self.owns(p)]
        send = [[] for _ in range(self.world)]
        for p in mine:  # every rank gets its shard's rows (HSDP: every replica's rank too)
            rows = torch.split(values[id(p)].float(), self._shard_rows[id(p)], dim=0)
            for r in range(self.world):
                send[r].append(rows[self._where[r][1]].reshape(-1))
        in_sizes = [sum(t.numel() for t in s) for s in send]
        out_sizes = [
            sum(
                self._rows[id(p)][self.rank] * row_numel(p)
                for p in active
                if self.owner[id(p)] == r
            )
            for r in range(self.world)
        ]
        inp = (
            torch.cat([t for s in send for t in s]) if any(in_sizes) else torch.zeros(0, device=dev)
        )
        out = torch.empty(sum(out_sizes), device=dev)
        dist.all_to_all_single(out, inp, out_sizes, in_sizes, group=self.group)
        pieces = torch.split(out, out_sizes)
        cursor = [0] * self.world
        for p in active:
            r = self.owner[id(p)]
            local = p.detach().to_local()
            n = local.numel()
            local.copy_(pieces[r][cursor[r] : cursor[r] + n].view_as(local))
            cursor[r] += n
        self.comm_bytes_per_step += 4 * (sum(in_sizes) + sum(out_sizes))
