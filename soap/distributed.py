"""Owner-computes distribution (ZeRO-1 style) of :class:`soap.SOAP`, :class:`soap.Shampoo` and
:class:`soap.Muon` across the ranks of a process group.

Replicating a preconditioned step on every rank multiplies its cost by nothing and its memory
by the world size: every rank runs every rotation, factor update and QR on the same numbers.
Here each parameter has one *owner* rank, chosen once so that every rank gets about the same
share of the work and of the state (greedy, largest first, onto the least-loaded rank; the
cost of a parameter is its share of the step's FLOPs - SOAP's per-step
``m^3 + n^3 + 2m^2 n + 2mn^2`` for an ``m x n`` matrix in the paper's count - plus its share
of the state bytes). Only the owner keeps that parameter's state and computes its update.

* **DDP** (plain parameters, identical on every rank after the gradient all-reduce): owners
  step their parameters in place, and flat all-gathers (each rank's owned parameters cut into
  four rounds, a round started as soon as its parameters are stepped, overlapping the rest of
  the computation) give every rank every new value. Values travel in the
  parameters' own dtype, so the result is exactly what the owner computed. Before the first
  step one small all-gather checks that parameters and gradients really are replicated (a
  user's independent per-rank models would otherwise be silently mixed): it fails with a
  one-line message naming ``distributed='off'``.
* **FSDP2** (``DTensor`` parameters sharded ``Shard(0)`` on a 1-D mesh, as ``fully_shard``
  makes them): one ``all_to_all_single`` brings every rank's shards of a parameter's gradient
  and value to its owner (in fp32, exact for fp32 and bf16), the owner steps the full matrix
  exactly as one process would, and a second ``all_to_all_single`` returns each rank its rows.
  Other placements (tensor parallelism, HSDP) raise ``TypeError``.

Collectives per step: four per dtype (DDP) or two (FSDP2), whatever the number of parameters.
``comm_bytes_per_step`` says how many bytes this rank sends and receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._collectives import _device, _row_numel, _split, all_gather_flat

__all__ = ["Distribution", "all_gather_flat", "assign_owners"]


def _world() -> tuple[Any, int, int] | None:
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return dist.group.WORLD, dist.get_rank(), dist.get_world_size()


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


ROUNDS = 4  # all-gathers per step and dtype (DDP), overlapping the owners' computation


@dataclass
class _Round:
    dtype: torch.dtype
    per_rank: list[list[Tensor]]
    width: int


@dataclass
class Distribution:
    group: Any
    rank: int
    world: int
    sharded: bool  # FSDP2 DTensor parameters
    params: list[Tensor]  # every parameter, in param-group order
    owner: dict[int, int]  # id(param) -> rank
    checked: bool = False
    comm_bytes_per_step: int = 0
    _rows: dict[int, list[int]] = field(default_factory=dict)  # FSDP2: dim-0 rows per rank
    _shard_rows: dict[int, list[int]] = field(default_factory=dict)  # ... and per shard index
    _where: list[tuple[int, int]] = field(default_factory=list)  # rank -> (replica, shard)

    @staticmethod
    def create(opt: Any) -> Distribution | bool:
        """The distribution for ``opt``, or False when there is one process (nothing to do)."""
        w = _world()
        params = [p for g in opt.param_groups for p in g["params"]]
        dtensors = [type(p).__name__ == "DTensor" for p in params]
        if w is None:
            if any(dtensors):
                raise TypeError(
                    f"{opt._name}: DTensor parameters but no process group with more than one "
                    "rank: initialise torch.distributed before stepping"
                )
            return False
        group, rank, world = w
        if any(dtensors) and not all(dtensors):
            raise TypeError(
                f"{opt._name}: some parameters are DTensors and some are not: shard the whole "
                "model with fully_shard, or none of it"
            )
        costs = []
        for gi, g in enumerate(opt.param_groups):
            for p in g["params"]:
                layout = opt._layout(p, opt.param_groups[gi])
                flops = layout.matmul_flops() + layout.refresh_flops() / g.get(
                    "precondition_frequency", 10
                )
                n = 1
                for s in layout.shape:
                    n *= s
                state = sum(
                    4 * torch.Size(shape).numel() for shape in opt._state_spec(layout).values()
                )
                costs.append((float(flops + 10 * n), float(state)))
        owners = assign_owners(costs, world)
        d = Distribution(
            group,
            rank,
            world,
            bool(dtensors and dtensors[0]),
            params,
            {id(p): o for p, o in zip(params, owners, strict=True)},
        )
        if d.sharded:
            d._check_placements(opt)
        return d

    def owns(self, p: Tensor) -> bool:
        return self.owner[id(p)] == self.rank

    # ---- the step --------------------------------------------------------------------------
    def step(self, opt: Any, loss: Any) -> Any:
        active = [p for p in self.params if p.grad is not None]
        if not self.checked:
            if not self.sharded:
                self._check_replicated(opt, active)
            self.checked = True
        self._raise_everywhere(opt, active)
        if self.sharded:
            buckets = opt._buckets()
            grads, values = self._gather_to_owners(active)
            opt._run(
                buckets,
                [[grads[id(p)] for p in b.params] for b in buckets],
                [[values[id(p)] for p in b.params] for b in buckets],
                check=False,
            )
            self._scatter_from_owners(active, values)
        else:
            self._step_and_share(opt, active)
        return loss

    def _raise_everywhere(self, opt: Any, active: list[Tensor]) -> None:
        """``nonfinite_grad='raise'``: every rank raises if any owner found a bad gradient."""
        if not any(g["nonfinite_grad"] == "raise" for g in opt.param_groups):
            return
        local = (lambda g: g.to_local()) if self.sharded else (lambda g: g)
        pairs = [(p, local(p.grad)) for p in active if self.sharded or self.owns(p)]
        error = None
        try:
            opt._raise_on_nonfinite(pairs)
        except Exception as e:  # NonFiniteGradientError
            error = e
        flag = torch.tensor([1.0 if error else 0.0], device=_device(active))
        dist.all_reduce(flag, group=self.group)
        if error is not None:
            raise error
        if flag.item():
            from .nonfinite import NonFiniteGradientError

            raise NonFiniteGradientError(
                f"{opt._name}: non-finite gradient (NaN/inf) in a parameter owned by another "
                "rank (its message names it); optimizer state left untouched"
            )

    # ---- DDP: owners step, then one all-gather per dtype ------------------------------------
    def _check_replicated(self, opt: Any, active: list[Tensor]) -> None:
        dev = _device(active)
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

    def _rounds(self, active: list[Tensor]) -> list[_Round]:
        """Each rank's owned parameters (per dtype) cut into ``ROUNDS`` runs of about equal
        size; round ``k`` of every rank travels in the ``k``-th all-gather."""
        out = []
        dtypes = sorted({p.dtype for p in active}, key=str)
        for dtype in dtypes:
            ps = [p for p in active if p.dtype == dtype]
            chunks = [
                _split([p for p in ps if self.owner[id(p)] == r], ROUNDS) for r in range(self.world)
            ]
            for k in range(ROUNDS):
                per_rank = [chunks[r][k] for r in range(self.world)]
                width = max(sum(p.numel() for p in rp) for rp in per_rank)
                if width:
                    out.append(_Round(dtype, per_rank, width))
        return out

    def _step_and_share(self, opt: Any, active: list[Tensor]) -> None:
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
                dev = _device(active)
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

    # ---- FSDP2: shards to owners, full step, rows back -------------------------------------
    def _check_placements(self, opt: Any) -> None:
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
        local = torch.tensor([p.to_local().shape[0] for p in self.params], dtype=torch.int64)
        out = torch.empty(self.world * local.numel(), dtype=torch.int64)
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
        dev = _device(active)
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
            sum(2 * self._rows[id(p)][r] * _row_numel(p) for p in mine) if r in sources else 0
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
                n = self._rows[id(p)][r] * _row_numel(p)
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
        dev = _device(active)
        mine = [p for p in active if self.owns(p)]
        send = [[] for _ in range(self.world)]
        for p in mine:  # every rank gets its shard's rows (HSDP: every replica's rank too)
            rows = torch.split(values[id(p)].float(), self._shard_rows[id(p)], dim=0)
            for r in range(self.world):
                send[r].append(rows[self._where[r][1]].reshape(-1))
        in_sizes = [sum(t.numel() for t in s) for s in send]
        out_sizes = [
            sum(
                self._rows[id(p)][self.rank] * _row_numel(p)
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
