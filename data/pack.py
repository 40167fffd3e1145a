"""Tokens into fixed-length sequences, and sequences into checksummed shard files - with
array operations only (no per-token Python).

Both data modes pack the same way: documents' tokens, each followed by the end-of-document
token, are concatenated in document order and cut into ``seq_len`` rows; the tail shorter
than a row waits for the next documents. So the validation set - the first ``N`` rows of the
validation split - is the same sequences whether the data was prepared or streamed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .tokenizer import Tokenizer


class Packer:
    """Cuts a token stream into ``(n, seq_len)`` rows; the unfinished tail is its state."""

    def __init__(self, seq_len: int, tail: np.ndarray | None = None) -> None:
        self.seq_len = seq_len
        self.tail = tail if tail is not None else np.empty(0, dtype=np.int32)

    def add(self, tokens: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self.tail, tokens]) if self.tail.size else tokens
        n = buf.size // self.seq_len
        self.tail = buf[n * self.seq_len :].copy()
        return buf[: n * self.seq_len].reshape(n, self.seq_len)


class ShardWriter:
    """Appends rows to ``<split>-NNNNN.bin`` files of ``shard_seqs`` rows each, hashing the
    bytes as they are written (no second read for the checksum)."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_seqs: int) -> None:
        self.out, self.split, self.dtype, self.shard_seqs = out, split, dtype, shard_seqs
        self.shards: list[dict[str, Any]] = []
        self._f: Any = None
        self._hash: Any = None
        self._rows = 0

    @property
    def sequences(self) -> int:
        return sum(s["sequences"] for s in self.shards) + self._rows

    def write(self, rows: np.ndarray) -> None:
        while rows.shape[0]:
            if self._f is None:
                self._open()
            take = min(rows.shape[0], self.shard_seqs - self._rows)
            data = np.ascontiguousarray(rows[:take], dtype=self.dtype).tobytes()
            self._f.write(data)
            self._hash.update(data)
            self._rows += take
            rows = rows[take:]
            if self._rows == self.shard_seqs:
                self._close()

    def _open(self) -> None:
        path = self.out / f"{self.split}-{len(self.shards):05d}.bin"
        self._f, self._hash, self._rows = open(path, "wb"), hashlib.sha256(), 0  # noqa: SIM115

    def _close(self) -> None:
        name = Path(self._f.name).name
        self._f.close()
        self.shards.append(
            {
                "file": name,
                "sequences": self._rows,
                "bytes": os.path.getsize(self.out / name),
                "sha256": self._hash.hexdigest(),
            }
        )
        self._f = None

    def finish(self) -> list[dict[str, Any]]:
        if self._f is not None:
            if self._rows:
                self._close()
            else:
                self._f.close()
                os.remove(self._f.name)
                self._f = None
        return self.shards


def _batched(docs: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(tok: Tokenizer, batch: list[str]) -> tuple[int, np.ndarray]:
    return len(batch), tok.encode_with_eos(batch)


def token_batches(
    docs: Iterable[str], tok: Tokenizer, num_proc: int, batch_docs: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(documents, tokens with EOS)`` per batch of documents, in document order, tokenized by
    ``num_proc`` worker processes (in this process when 1). At most ``2 num_proc`` batches are
    in flight, so memory does not grow with the corpus."""
    batches = _batched(docs, batch_docs)
    if num_proc <= 1:
        for b in batches:
            yield _encode(tok, b)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # workers inherit the loaded tokenizer; nothing to re-import
    with ProcessPoolExecutor(num_proc, mp_context=ctx) as pool:
        window: list[Future] = []
        for b in batches:
            window.append(pool.submit(_encode, tok, b))
            if len(window) >= 2 * num_proc:
                yield window.pop(0).result()
        for f in window:
            yield f.result()
