"""The data configuration: one typed schema, the single source of its defaults.

``configs/data/*.yaml`` are presets over :class:`DataConfig` (Hydra validates them against it:
a misspelt key or a wrong type fails at composition); ``data/`` reads these objects, never
dicts with ad-hoc defaults. ``DataConfig.from_dict`` builds one from a plain mapping (tests,
callers outside Hydra) with the same validation of keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("embedded", "local", "hf", "c4")
MODES = ("prepared", "stream")


class DataError(RuntimeError):
    """A data problem with a one-line message that names the fix."""


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # bpe: trained locally on the training split; pretrained: by name/path
    vocab_size: int = 4096  # bpe only
    name: str | None = None  # pretrained only: t5-base (the paper's), gpt2, or a local path


@dataclass
class DataConfig:
    source: str = "embedded"  # embedded | local | hf | c4
    name: str | None = None  # hf/c4: hub dataset id, or a local folder in the hub layout
    config: str | None = None  # hf/c4: dataset config (c4: en)
    paths: list[str] | None = None  # local: files, directories or globs
    text_field: str = "text"
    split_paragraphs: bool | None = None  # local .txt: None = cut only one-document files
    val_fraction: float = 0.05  # embedded/local: share of documents held out (by hash)
    train_split: str = "train"
    validation_split: str = "validation"
    mode: str = "prepared"  # prepared: tokenize once into shards; stream: tokenize on the fly
    max_tokens: int | None = None  # training tokens to prepare; None: the run's budget
    max_val_tokens: int | None = 10_000_000
    num_proc: int | None = None  # tokenizer worker processes; None: all cores
    shard_tokens: int = 1 << 24
    batch_docs: int = 256
    dtype: str = "auto"  # token dtype on disk: auto | uint16 | uint32
    verify: str = "full"  # full: sha256 every shard on reuse; size: sizes only
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"unknown data option(s) {unknown}: use one of {sorted(known)}")
        d = dict(d)
        tok = d.pop("tokenizer", None)
        out = cls(**d)
        if tok is not None:
            out.tokenizer = tok if isinstance(tok, TokenizerConfig) else TokenizerConfig(**tok)
        return out

    def content_key(self) -> dict[str, Any]:
        """What determines the prepared tokens (not how they are produced or checked)."""
        d = dataclasses.asdict(self)
        for k in ("num_proc", "batch_docs", "verify", "mode"):
            d.pop(k)
        return d
