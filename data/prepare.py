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
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig, DataError
from .pack import Packer, ShardWriter, token_batches
from .sources import SPLITS, iter_documents
from .tokenizer import Tokenizer, bpe_path, load_tokenizer

FORMAT_VERSION = 1


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


def _write_split(
    docs: Iterator[str],
    tok: Tokenizer,
    cfg: DataConfig,
    seq_len: int,
    dtype: np.dtype,
    out: Path,
    split: str,
    max_tokens: int | None,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    packer = Packer(seq_len)
    writer = ShardWriter(out, split, dtype, max(1, cfg.shard_tokens // seq_len))
    n_docs = n_tokens = 0
    bar = tqdm(
        desc=f"tokenize {split}", unit="tok", unit_scale=True, disable=not progress, leave=False
    )
    for n, tokens in token_batches(docs, tok, num_proc(cfg), cfg.batch_docs):
        n_docs += n
        n_tokens += tokens.size
        bar.update(tokens.size)
        writer.write(packer.add(tokens))
        if max_tokens is not None and writer.sequences * seq_len >= max_tokens:
            break
    bar.close()
    shards = writer.finish()
    return {
        "documents": n_docs,
        "tokens": n_tokens,
        "sequences": sum(s["sequences"] for s in shards),
        "dropped_tokens": int(packer.tail.size),
        "shards": shards,
    }


def num_proc(cfg: DataConfig) -> int:
    """Tokenizer worker processes: ``data.num_proc``, or every core."""
    return max(1, int(cfg.num_proc or os.cpu_count() or 1))


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
    # Worker processes are the parallelism; tokenizers' own threads would oversubscribe.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    max_tokens = cfg.max_tokens
    tok = tokenizer_for(cfg, cache_dir)
    dtype = _dtype_for(tok.vocab_size, cfg.dtype)
    # A folder of this process's own: two runs started at once on a cold cache both prepare
    # (the first to finish publishes; a shared ".tmp" had one delete the other's files).
    _remove_abandoned(root)
    tmp = root.with_name(f"{root.name}.tmp-{_HOST}-{os.getpid()}-{threading.get_ident()}")
    tmp.mkdir(parents=True)
    splits = {}
    for split in SPLITS:
        limit = max_tokens if split == "train" else cfg.max_val_tokens
        splits[split] = _write_split(
            iter_documents(cfg, split),
            tok,
            cfg,
            seq_len,
            dtype,
            tmp,
            split,
            int(limit) if limit else None,
            progress,
        )
        if splits[split]["sequences"] == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"the {split} split of source {cfg.source!r} has fewer than seq_len={seq_len} "
                "tokens: add data, lower regime.seq_len, raise data.val_fraction, or cut .txt "
                "files into paragraphs with data.split_paragraphs=true"
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
    return _publish(tmp, root, manifest, cfg.verify == "full")


_HOST = socket.gethostname().replace("-", "_")


def _remove_abandoned(root: Path) -> None:
    """Delete the folders of preparations of ``root`` killed on this host (their process is
    gone); other hosts' (a shared file system) are left to them."""
    for d in root.parent.glob(f"{root.name}.tmp-{_HOST}-*"):
        pid = int(d.name.split("-")[-2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _publish(tmp: Path, root: Path, manifest: dict, full_verify: bool) -> Prepared:
    """Move ``tmp`` into place with one rename, unless another process has published the
    same data first (then its copy is used: runs may already be reading it)."""
    for _ in range(2):
        try:
            tmp.rename(root)
            return Prepared(root, manifest)
        except OSError:  # root exists and is not empty
            try:
                found = load_prepared(root, full_verify)
            except DataError:
                found = None
            if found is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return found
            shutil.rmtree(root, ignore_errors=True)  # a stale, incomplete one
    raise DataError(f"could not move prepared data into {root}: delete it and run again")


def tokenizer_for(cfg: DataConfig, cache_dir: str | Path, wait: bool = False) -> Tokenizer:
    """The run's tokenizer: pretrained, or a BPE trained on (at most ~4 x max_tokens characters
    of) the training split and cached - the same file for both data modes. With ``wait``,
    a BPE is not trained here but waited for (another rank trains it)."""
    if wait and cfg.tokenizer.kind == "bpe":
        path = bpe_path(cfg.tokenizer, cache_dir, source_key(cfg))
        said = False
        while not path.exists():
            if not said:
                print(
                    f"waiting for rank 0 to train the tokenizer {path}", file=sys.stderr, flush=True
                )
                said = True
            time.sleep(2.0)
        return load_tokenizer(cfg.tokenizer, None, Path(cache_dir), source_key(cfg))
    docs = _limit(iter_documents(cfg, "train"), cfg.max_tokens)
    return load_tokenizer(cfg.tokenizer, docs, Path(cache_dir), source_key(cfg))


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
