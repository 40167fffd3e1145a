"""Tokenizers: a pretrained one by name or path (``transformers.AutoTokenizer``; ``t5-base`` as
in the paper, ``gpt2``), or a byte-level BPE trained locally with ``tokenizers`` on the training
split (deterministic, cached by content key) for offline runs."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataError, TokenizerConfig

EOS = "<|endoftext|>"
BYTES = 256  # the byte-level alphabet every BPE here starts from


_LOADED: dict[tuple[str, str], Any] = {}  # per process: (kind, source) -> the library object


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer by its spec (kind + file or name), so it pickles to worker processes; the
    library object is built once per process on first use."""

    name: str
    vocab_size: int
    eos_id: int
    kind: str  # bpe | pretrained
    source: str  # the BPE json file, or the pretrained name/path

    def _impl(self) -> Any:
        key = (self.kind, self.source)
        if key not in _LOADED:
            if self.kind == "bpe":
                from tokenizers import Tokenizer as HFTokenizer

                _LOADED[key] = HFTokenizer.from_file(self.source)
            else:
                from transformers import AutoTokenizer

                _LOADED[key] = AutoTokenizer.from_pretrained(self.source)
        return _LOADED[key]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        impl = self._impl()
        if self.kind == "bpe":
            return [e.ids for e in impl.encode_batch(texts, add_special_tokens=False)]
        return impl(texts, add_special_tokens=False)["input_ids"]

    def encode_with_eos(self, texts: list[str]) -> np.ndarray:
        """The documents' tokens, each followed by the end-of-document token, as one flat
        ``int32`` array (filled per document, never per token in Python)."""
        ids = self.encode_batch(texts)
        out = np.empty(sum(len(x) + 1 for x in ids), dtype=np.int32)
        pos = 0
        for x in ids:
            n = len(x)
            out[pos : pos + n] = x
            out[pos + n] = self.eos_id
            pos += n + 1
        return out


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_bpe(docs: Iterable[str], vocab_size: int, path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")  # see prepare()
    tok.save(str(tmp))
    tmp.replace(path)


def bpe_path(cfg: TokenizerConfig, cache_dir: str | Path, source_key: str) -> Path:
    """Where the BPE trained for this source and vocabulary size is cached."""
    vocab = int(cfg.vocab_size)
    return Path(cache_dir) / "tokenizers" / f"bpe-{vocab}-{_key([source_key, vocab])}.json"


def load_tokenizer(
    cfg: TokenizerConfig, train_docs: Iterator[str] | None, cache_dir: Path, source_key: str
) -> Tokenizer:
    """A locally trained byte-level BPE (``kind=bpe``) or a pretrained one (``kind=pretrained``)."""
    kind = cfg.kind
    if kind == "bpe":
        vocab = int(cfg.vocab_size)
        if vocab < BYTES + 1:  # 257: the bytes and the end-of-document token, no merge
            raise DataError(
                f"tokenizer.vocab_size={vocab} is too small for byte-level BPE: use >= "
                f"{BYTES + 1} (the {BYTES} bytes and the end-of-document token; "
                f"{BYTES + 1} is plain bytes)"
            )
        path = bpe_path(cfg, cache_dir, source_key)
        if not path.exists():
            if train_docs is None:
                raise DataError("no documents to train the BPE tokenizer on")
            path.parent.mkdir(parents=True, exist_ok=True)
            train_bpe(train_docs, vocab, path)
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_file(str(path))
        return Tokenizer(
            name=f"bpe-{vocab}:{path.name}",
            vocab_size=tok.get_vocab_size(),
            eos_id=tok.token_to_id(EOS),
            kind="bpe",
            source=str(path.resolve()),
        )
    if kind == "pretrained":
        name = cfg.name
        if not name:
            raise DataError(
                "data.tokenizer.kind=pretrained needs data.tokenizer.name (e.g. t5-base, gpt2, or a local path)"
            )
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name)
        except Exception as e:
            raise DataError(
                f"cannot load tokenizer {name!r} ({type(e).__name__}): it needs the Hugging Face hub or a local "
                "copy; pass data.tokenizer.name=<local path>, allow network access, or use data.tokenizer.kind=bpe"
            ) from None
        eos = tok.eos_token_id
        if eos is None:
            raise DataError(f"tokenizer {name!r} has no end-of-document token")
        _LOADED[("pretrained", name)] = tok
        return Tokenizer(
            name=f"pretrained:{name}",
            vocab_size=len(tok),
            eos_id=int(eos),
            kind="pretrained",
            source=name,
        )
    raise DataError(f"unknown data.tokenizer.kind {kind!r}: use bpe or pretrained")
