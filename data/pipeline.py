"""The data a run trains and evaluates on, built once per process: the training loader and
the fixed validation set, for every rank, in either mode."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import DataConfig
from .loader import Loader, PackedSequences, TrainLoader, validation_batches
from .prepare import Prepared, load_prepared, prepare, prepared_root


@dataclass
class Data:
    loader: Loader  # TrainLoader (prepared shards) or StreamLoader (data.mode=stream)
    validation: list[torch.Tensor]  # this rank's part of the fixed validation set
    vocab_size: int
    info: dict[str, Any]  # for env.json: where the data is and what it is


def prepare_shared(
    cfg: DataConfig,
    seq_len: int,
    cache_dir: str | Path,
    is_main: bool,
    progress: bool,
    train_tokens: int | None = None,
    poll_seconds: float = 2.0,
) -> Prepared:
    """Rank 0 prepares (or reuses) the shards; the other ranks wait for its manifest file,
    saying what they wait for, instead of sitting in a collective whose timeout a long
    tokenization would exceed. A hub corpus is prepared up to ``train_tokens`` (what the run
    consumes) unless ``data.max_tokens`` says otherwise; a local or embedded one in full."""
    if cfg.max_tokens is None and cfg.source in ("hf", "c4") and train_tokens:
        cfg = dataclasses.replace(cfg, max_tokens=int(train_tokens))
    if is_main:
        return prepare(cfg, seq_len, cache_dir, progress=progress)
    root = prepared_root(cfg, seq_len, cache_dir)
    said = False
    while True:
        found = load_prepared(root, full_verify=False)
        if found is not None:
            return found
        if not said:
            print(f"waiting for rank 0 to prepare the data in {root}", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_seconds)


def build_data(
    cfg: DataConfig,
    *,
    seq_len: int,
    cache_dir: str | Path,
    train_tokens: int,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    rank: int,
    seed: int,
    eval_sequences: int,
    eval_batch_size: int,
    progress: bool,
) -> Data:
    if cfg.mode == "stream":
        return _stream(
            cfg,
            seq_len,
            cache_dir,
            train_tokens,
            micro_batch,
            grad_accum,
            world_size,
            rank,
            eval_sequences,
            eval_batch_size,
        )
    prep = prepare_shared(cfg, seq_len, cache_dir, rank == 0, progress, train_tokens)
    loader = TrainLoader(
        PackedSequences(prep, "train"), micro_batch, grad_accum, world_size, rank, seed
    )
    val = validation_batches(
        PackedSequences(prep, "validation"), eval_sequences, eval_batch_size, world_size, rank
    )
    manifest = {k: v for k, v in prep.manifest.items() if k != "splits"}
    train_tokens = int(prep.manifest["splits"]["train"]["sequences"]) * seq_len
    info = {"root": str(prep.root), "manifest": manifest, "train_tokens": train_tokens}
    return Data(loader, val, prep.vocab_size, info)


def _stream(
    cfg: DataConfig,
    seq_len: int,
    cache_dir: str | Path,
    train_tokens: int,
    micro_batch: int,
    grad_accum: int,
    world_size: int,
    rank: int,
    eval_sequences: int,
    eval_batch_size: int,
) -> Data:
    from .prepare import tokenizer_for
    from .stream import StreamLoader, stream_validation

    if cfg.max_tokens is None:  # the same tokenizer (and cache key) as the prepared mode
        cfg = dataclasses.replace(cfg, max_tokens=int(train_tokens))
    tok = tokenizer_for(cfg, cache_dir, wait=rank != 0)
    loader = StreamLoader(cfg, tok, seq_len, micro_batch, grad_accum, world_size, rank)
    val = stream_validation(cfg, tok, seq_len, eval_sequences, eval_batch_size, world_size, rank)
    info = {"mode": "stream", "source": cfg.name, "tokenizer": tok.name}
    return Data(loader, val, tok.vocab_size, info)
