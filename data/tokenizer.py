"""Tokenizers: a pretrained one by name or path (``transformers.AutoTokenizer``; ``t5-base`` as
in the paper, ``gpt2``), or a byte-level BPE trained locally with ``tokenizers`` on the training
split (deterministic, cached by content key) for offline runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TokenizerConfig
from .sources import DataError

EOS = "<|endoftext|>"


@dataclass
class Tokenizer:
    name: str
    vocab_size: int
    eos_id: int
    _encode: Any

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encode(texts)


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
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)


def load_tokenizer(
    cfg: TokenizerConfig, train_docs: Iterator[str] | None, cache_dir: Path, source_key: str
) -> Tokenizer:
    """A locally trained byte-level BPE (``kind=bpe``) or a pretrained one (``kind=pretrained``)."""
    kind = cfg.kind
    if kind == "bpe":
        vocab = int(cfg.vocab_size)
        if vocab < 300:
            raise DataError(
                f"tokenizer.vocab_size={vocab} is too small for byte-level BPE (>= 300)"
            )
        path = Path(cache_dir) / "tokenizers" / f"bpe-{vocab}-{_key([source_key, vocab])}.json"
        if not path.exists():
            if train_docs is None:
                raise DataError("no documents to train the BPE tokenizer on")
            path.parent.mkdir(parents=True, exist_ok=True)
            train_bpe(train_docs, vocab, path)
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_file(str(path))
        eos = tok.token_to_id(EOS)
        return Tokenizer(
            name=f"bpe-{vocab}:{path.name}",
            vocab_size=tok.get_vocab_size(),
            eos_id=eos,
            _encode=lambda texts: [
                e.ids for e in tok.encode_batch(texts, add_special_tokens=False)
            ],
        )
    if kind == "pretrained":
        name = cfg.name
        if not name:
            raise DataError(
                "tokenizer.kind=pretrained needs tokenizer.name (e.g. t5-base, gpt2, or a local path)"
            )
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name)
        except Exception as e:
            raise DataError(
                f"cannot load tokenizer {name!r} ({type(e).__name__}): it needs the Hugging Face hub or a local "
                "copy; pass a local path, allow network access, or use tokenizer.kind=bpe"
            ) from None
        eos = tok.eos_token_id
        if eos is None:
            raise DataError(f"tokenizer {name!r} has no end-of-document token")
        return Tokenizer(
            name=f"pretrained:{name}",
            vocab_size=len(tok),
            eos_id=int(eos),
            _encode=lambda texts: tok(texts, add_special_tokens=False)["input_ids"],
        )
    raise DataError(f"unknown tokenizer.kind {kind!r}: use bpe or pretrained")
