"""``data.mode=stream``: no prepare step. The documents of a streaming ``datasets`` source
(the C4 path, or a local folder in the hub layout) are tokenized and packed on the fly.

Each rank reads its own part of the stream (``datasets.distributed.split_dataset_by_node``:
whole shards when their number divides by the world size, every ``world``-th record
otherwise), tokenizes documents in batches, packs them exactly as the prepare step does
(:mod:`data.pack`) and serves ``grad_accum`` micro-batches per iteration. Its state - the
dataset's own ``state_dict()`` (position in the stream), the unfinished tail of the packer
and the rows already packed but not yet served - goes into every checkpoint, so a run killed
with SIGKILL resumes on exactly the batches it would have seen. That state is per rank:
a streaming run resumes with the number of processes that wrote it. The stream is read in
order (C4's documents are already in random order); at its end it starts over (next epoch).

The validation set is the same in both modes: the first ``eval_sequences`` rows of the
validation split, packed the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .config import DataConfig, DataError
from .pack import Packer
from .sources import dataset_texts, hub_dataset
from .tokenizer import Tokenizer


class StreamLoader:
    """The training loader of ``data.mode=stream`` (a :class:`data.loader.Loader`)."""

    per_rank_state = True  # every rank reads its own part of the stream

    def __init__(
        self,
        cfg: DataConfig,
        tok: Tokenizer,
        seq_len: int,
        micro_batch: int,
        grad_accum: int,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        if cfg.source not in ("hf", "c4"):
            raise DataError(
                f"data.mode=stream reads a streaming hub dataset (data=hf or data=c4), not "
                f"source {cfg.source!r}: use data.mode=prepared"
            )
        self.cfg, self.tok = cfg, tok
        self.micro, self.accum = micro_batch, grad_accum
        self.ds = split_dataset_by_node(hub_dataset(cfg, "train"), rank=rank, world_size=world_size)
        self.packer = Packer(seq_len)
        self.rows = np.empty((0, seq_len), dtype=np.int32)
        self.epoch = 0
        self._texts: Any = None

    def _docs(self) -> list[str]:
        if self._texts is None:
            self._texts = dataset_texts(self.ds, self.cfg, "train")
        batch = []
        for text in self._texts:
            batch.append(text)
            if len(batch) == self.cfg.batch_docs:
                return batch
        # The stream ended: next epoch from its start.
        self._texts = None
        self.epoch += 1
        self.ds.set_epoch(self.epoch)
        if not batch and self.epoch > 1_000:
            raise DataError("the training stream yields no documents: check data.name")
        return batch

    def next(self) -> list[torch.Tensor]:
        """The micro-batches (``grad_accum`` tensors ``(micro, seq_len)``) of the next step."""
        need = self.micro * self.accum
        while self.rows.shape[0] < need:
            docs = self._docs()
            if docs:
                self.rows = np.concatenate(
                    [self.rows, self.packer.add(self.tok.encode_with_eos(docs))]
                )
        take, self.rows = self.rows[:need], self.rows[need:]
        t = torch.from_numpy(take.astype(np.int64))
        return list(t.split(self.micro))

    def state_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.ds.state_dict(),
            "tail": self.packer.tail.copy(),
            "rows": self.rows.copy(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.ds.set_epoch(self.epoch)
        self.ds.load_state_dict(state["dataset"])
        self.packer.tail = np.asarray(state["tail"], dtype=np.int32)
        self.rows = np.asarray(state["rows"], dtype=np.int32)
        self._texts = None


def stream_validation(
    cfg: DataConfig, tok: Tokenizer, seq_len: int, n: int, batch_size: int, world: int, rank: int
) -> list[torch.Tensor]:
    """The first ``n`` validation rows (as the prepare step would write them), this rank's
    share by striding (as :func:`data.loader.validation_batches`)."""
    packer, rows = Packer(seq_len), []
    got = 0
    batch: list[str] = []
    for text in dataset_texts(hub_dataset(cfg, "validation"), cfg, "validation"):
        batch.append(text)
        if len(batch) == cfg.batch_docs:
            r = packer.add(tok.encode_with_eos(batch))
            rows.append(r)
            got += r.shape[0]
            batch = []
            if got >= n:
                break
    if batch and got < n:
        rows.append(packer.add(tok.encode_with_eos(batch)))
    allrows = np.concatenate(rows)[:n] if rows else np.empty((0, seq_len), dtype=np.int32)
    if allrows.shape[0] == 0:
        raise DataError(
            f"the validation split of {cfg.name!r} has fewer than seq_len={seq_len} tokens: "
            "add validation data or lower regime.seq_len"
        )
    mine = torch.from_numpy(allrows[rank::world].astype(np.int64))
    return list(mine.split(batch_size))
