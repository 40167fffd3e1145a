"""Deterministic, resumable, rank-sharded batches over prepared shards, and the fixed
validation set.

An *iteration* is one optimizer step: it consumes one global batch of
``micro_batch * grad_accum * world_size`` sequences. The global batch at step ``s`` is a slice
of a per-epoch permutation drawn from ``(seed, epoch)``; rank ``r`` takes micro-batch ``k`` as
rows ``[(k * world + r) * micro, ...)`` of it. So the sequences of a step do not depend on the
number of processes, ranks never overlap, and the loader's whole state is ``(epoch, step)``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .config import DataError
from .prepare import Prepared


@runtime_checkable
class Loader(Protocol):
    """What the trainer needs from a training loader (:class:`TrainLoader` over prepared
    shards, :class:`data.stream.StreamLoader` over a stream): one iteration's micro-batches,
    and a state that a checkpoint saves and a resume restores exactly."""

    per_rank_state: bool  # True: every rank's state differs and is saved per rank

    def next(self) -> list[torch.Tensor]:
        """This rank's ``grad_accum`` micro-batches of the next iteration."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PackedSequences:
    """All sequences of one split as a read-only ``(N, seq_len)`` view over memmapped shards."""

    def __init__(self, prep: Prepared, split: str) -> None:
        m = prep.manifest
        self.seq_len = int(m["seq_len"])
        dtype = np.dtype(m["dtype"])
        self._shards = [
            np.memmap(
                prep.root / s["file"], dtype=dtype, mode="r", shape=(s["sequences"], self.seq_len)
            )
            for s in m["splits"][split]["shards"]
        ]
        self._starts = np.cumsum([0] + [s.shape[0] for s in self._shards])
        self.num_sequences = int(self._starts[-1])

    def __len__(self) -> int:
        return self.num_sequences

    def get(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((idx.size, self.seq_len), dtype=np.int64)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for j, (sh, i) in enumerate(zip(shard_of, idx, strict=True)):
            out[j] = self._shards[sh][i - self._starts[sh]]
        return torch.from_numpy(out)


class TrainLoader:
    """Global batches of packed sequences; this rank's micro-batches of each."""

    per_rank_state = False  # the state (epoch, step) is the same on every rank

    def __init__(
        self,
        data: PackedSequences,
        micro_batch: int,
        grad_accum: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        self.data, self.micro, self.accum = data, int(micro_batch), int(grad_accum)
        self.world, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.global_batch = self.micro * self.accum * self.world
        if self.global_batch > len(data):
            raise DataError(
                f"global batch of {self.global_batch} sequences exceeds the {len(data)} training sequences: "
                "use a smaller batch or more data"
            )
        self.steps_per_epoch = len(data) // self.global_batch
        self.epoch = 0
        self.step_in_epoch = 0
        self._perm: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            g = np.random.default_rng([self.seed, self.epoch])
            self._perm = g.permutation(len(self.data))
        return self._perm

    def next(self) -> list[torch.Tensor]:
        """The micro-batches (``grad_accum`` tensors ``(micro, seq_len)``) of the next step."""
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
            self._perm = None
        perm = self._permutation()
        start = self.step_in_epoch * self.global_batch
        rows = perm[start : start + self.global_batch]
        self.step_in_epoch += 1
        out = []
        for k in range(self.accum):
            off = (k * self.world + self.rank) * self.micro
            out.append(self.data.get(rows[off : off + self.micro]))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self._perm = None


def validation_batches(
    data: PackedSequences, max_sequences: int, batch_size: int, world_size: int = 1, rank: int = 0
) -> list[torch.Tensor]:
    """The fixed validation set: the first ``max_sequences`` sequences (same for every run and
    optimizer), split across ranks by striding."""
    n = min(int(max_sequences), len(data))
    mine = list(range(rank, n, world_size))
    return [data.get(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size)]
