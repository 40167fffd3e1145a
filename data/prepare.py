"""Tokenize documents, append an end-of-document token, pack into fixed-length sequences and
write memory-mapped token shards plus a manifest (source, tokenizer, seq_len, counts, sha256).

``python -m scripts.prepare <the run's overrides>`` (what the trainer would prepare, through
Hydra's compose API) or called by the trainer. Results are cached under a content key: a
second call with the same source, tokenizer and ``seq_len`` reuses the shards after checking
them against the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig
from .sources import SPLITS, DataError, iter_documents
from .tokenizer import Tokenizer, load_tokenizer

FORMAT_VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 24


@dataclass
class Prepared:
    root: Path
    manifest: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype_for(vocab_size: int, requested: str = "auto") -> np.dtype:
    if requested == "auto":
        requested = "uint16" if vocab_size <= 1 << 16 else "uint32"
    limit = {"uint16": 1 << 16, "uint32": 1 << 32}.get(requested)
    if limit is None:
        raise DataError(f"data.dtype={requested!r} is not supported: use auto, uint16 or uint32")
    if vocab_size > limit:
        raise DataError(
            f"vocabulary of {vocab_size} tokens does not fit {requested}: set data.dtype=uint32 (or auto)"
        )
    return np.dtype(requested)


def source_key(cfg: DataConfig) -> str:
    """What the documents depend on (the tokenizer is keyed separately)."""
    keep = cfg.content_key()
    keep.pop("tokenizer")
    if cfg.source == "embedded":
        keep["python"] = sys.version.split()[0]
    return json.dumps(keep, sort_keys=True, default=str)


def _batched(docs: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_split(
    docs: Iterator[str],
    tok: Tokenizer,
    seq_len: int,
    dtype: np.dtype,
    out: Path,
    split: str,
    max_tokens: int | None,
    shard_tokens: int,
    batch_docs: int,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    shard_seqs = max(1, shard_tokens // seq_len)
    shards: list[dict[str, Any]] = []
    buf = np.empty(0, dtype=np.int64)
    pending: list[np.ndarray] = []
    n_docs = n_tokens = 0
    bar = tqdm(
        desc=f"tokenize {split}", unit="tok", unit_scale=True, disable=not progress, leave=False
    )

    def flush(seqs: list[np.ndarray]) -> None:
        arr = np.stack(seqs).astype(dtype)
        path = out / f"{split}-{len(shards):05d}.bin"
        arr.tofile(path)
        shards.append(
            {
                "file": path.name,
                "sequences": int(arr.shape[0]),
                "bytes": path.stat().st_size,
                "sha256": _sha256(path),
            }
        )

    for batch in _batched(docs, batch_docs):
        ids = tok.encode_batch(batch)
        n_docs += len(batch)
        flat = np.fromiter((t for doc in ids for t in (*doc, tok.eos_id)), dtype=np.int64)
        n_tokens += flat.size
        bar.update(flat.size)
        buf = np.concatenate([buf, flat])
        usable = (buf.size // seq_len) * seq_len
        for s in buf[:usable].reshape(-1, seq_len):
            pending.append(s)
            if len(pending) == shard_seqs:
                flush(pending)
                pending = []
        buf = buf[usable:]
        if (
            max_tokens is not None
            and (sum(s["sequences"] for s in shards) + len(pending)) * seq_len >= max_tokens
        ):
            break
    bar.close()
    if pending:
        flush(pending)
    return {
        "documents": n_docs,
        "tokens": n_tokens,
        "sequences": sum(s["sequences"] for s in shards),
        "dropped_tokens": int(buf.size),
        "shards": shards,
    }


def verify(root: Path, manifest: dict[str, Any], full: bool = True) -> None:
    """Check every shard against the manifest (size always; sha256 when ``full``)."""
    seq_len = manifest["seq_len"]
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for s in manifest["splits"][split]["shards"]:
            path = root / s["file"]
            if not path.exists():
                raise DataError(f"shard {path} is missing: delete {root} to re-prepare the data")
            size = path.stat().st_size
            if size != s["bytes"] or size != s["sequences"] * seq_len * itemsize:
                raise DataError(
                    f"shard {path} has {size} bytes, manifest says {s['bytes']}: corrupt shard; delete {root} to re-prepare"
                )
            if full and _sha256(path) != s["sha256"]:
                raise DataError(
                    f"shard {path} fails its sha256 checksum: corrupt shard; delete {root} to re-prepare"
                )


def prepared_root(cfg: DataConfig, seq_len: int, cache_dir: str | Path) -> Path:
    """Where :func:`prepare` puts (or finds) the shards for ``cfg`` and ``seq_len``."""
    tok_cfg = dataclasses.asdict(cfg.tokenizer)
    key = hashlib.sha256(
        json.dumps(
            [FORMAT_VERSION, source_key(cfg), tok_cfg, int(seq_len)], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:16]
    return Path(cache_dir) / "prepared" / key


def load_prepared(root: Path, full_verify: bool) -> Prepared | None:
    """The prepared data in ``root`` after checking it, or None if there is none (yet)."""
    mpath = root / "manifest.json"
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError:
        raise DataError(
            f"{mpath} is not valid JSON: delete {root} to re-prepare the data"
        ) from None
    verify(root, manifest, full=full_verify)
    return Prepared(root, manifest)


def prepare(
    cfg: DataConfig,
    seq_len: int,
    cache_dir: str | Path = ".cache/soap-bench",
    progress: bool = True,
) -> Prepared:
    """Prepare (or reuse) packed shards for ``cfg``; returns the manifest."""
    if int(seq_len) < 2:
        raise DataError(f"seq_len must be >= 2, got {seq_len}")
    seq_len = int(seq_len)
    tok_cfg = dataclasses.asdict(cfg.tokenizer)
    cache_dir = Path(cache_dir)
    skey = source_key(cfg)
    root = prepared_root(cfg, seq_len, cache_dir)
    found = load_prepared(root, cfg.verify == "full")
    if found is not None:
        return found

    t0 = time.time()
    max_tokens = cfg.max_tokens
    tok = load_tokenizer(
        cfg.tokenizer, _limit(iter_documents(cfg, "train"), max_tokens), cache_dir, skey
    )
    dtype = _dtype_for(tok.vocab_size, cfg.dtype)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits = {}
    for split in SPLITS:
        limit = max_tokens if split == "train" else cfg.max_val_tokens
        splits[split] = _write_split(
            iter_documents(cfg, split),
            tok,
            seq_len,
            dtype,
            tmp,
            split,
            int(limit) if limit else None,
            int(cfg.shard_tokens),
            int(cfg.batch_docs),
            progress,
        )
        if splits[split]["sequences"] == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"the {split} split of source {cfg.source!r} has fewer than seq_len={seq_len} "
                "tokens: add data, lower seq_len, or change data.val_fraction"
            )
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": json.loads(skey),
        "tokenizer": {
            "name": tok.name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            **tok_cfg,
        },
        "seq_len": seq_len,
        "dtype": dtype.name,
        "splits": splits,
        "seconds": round(time.time() - t0, 2),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return Prepared(root, manifest)


def _limit(docs: Iterator[str], max_tokens: int | None) -> Iterator[str]:
    """Bound the tokenizer-training text for huge (streamed) sources: ~4 chars per token."""
    if not max_tokens:
        yield from docs
        return
    budget = 4 * int(max_tokens)
    for d in docs:
        yield d
        budget -= len(d)
        if budget <= 0:
            return
