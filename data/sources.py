"""Document sources: embedded (offline default), local files, and Hugging Face hub datasets.

Every source yields plain-text documents for a split (``"train"`` or ``"validation"``).

* ``embedded``: English prose that ships with every CPython installation and needs no network
  nor any file in this repo: the pydoc reference topics (``pydoc_data.topics``) and the
  docstrings (>= 200 characters) of modules, classes and functions in the standard library's
  sources, read with ``ast`` (nothing is imported). About 1.6M characters on CPython 3.11 (~0.44M
  tokens with the default 4096-token BPE; ``python -m scripts.bench.data`` prints both). Limits: technical English about Python, small, and slightly different
  between Python versions (the prepared manifest records a content checksum).
* ``local``: ``.txt`` (one document per file, or per blank-line-separated block with
  ``split_paragraphs``), ``.jsonl``/``.jsonl.gz`` and ``.parquet`` (a ``text_field``), given as
  files, directories or globs.
* ``hf`` / ``c4``: ``datasets.load_dataset(..., streaming=True)``; ``c4`` is ``allenai/c4``,
  config ``en`` (the paper's data).

For ``embedded`` and ``local``, the train/validation split is by document with a hash of the
document's text, so no document is in both. Hub sources use their own validation split.
"""

from __future__ import annotations

import ast
import functools
import glob
import gzip
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import DataConfig, DataError

SPLITS = ("train", "validation")


def _in_validation(text: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
    return (h % 1_000_000) < val_fraction * 1_000_000


def _split_filter(docs: Iterator[str], split: str, val_fraction: float) -> Iterator[str]:
    want_val = split == "validation"
    for d in docs:
        if _in_validation(d, val_fraction) == want_val:
            yield d


# ---- embedded -------------------------------------------------------------------------
_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "__pycache__",
    "lib2to3",
    "turtledemo",
    "tkinter",
}


def embedded_documents(min_chars: int = 200) -> Iterator[str]:
    """The embedded corpus, in a deterministic order."""
    yield from _embedded_list(min_chars)


@functools.lru_cache(maxsize=2)
def _embedded_list(min_chars: int) -> tuple[str, ...]:
    """Parsed once per process (parsing the stdlib dominates a cold prepare otherwise)."""
    return tuple(_embedded_scan(min_chars))


def _embedded_scan(min_chars: int) -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) >= min_chars:
            yield text
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(dirpath, fn).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(
                    node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
                ):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars:
                        yield doc


# ---- local files ------------------------------------------------------------------------
def _expand(paths: list[str] | str) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    out: list[Path] = []
    for spec in paths:
        matches = (
            sorted(glob.glob(str(spec), recursive=True))
            if any(c in str(spec) for c in "*?[")
            else [str(spec)]
        )
        if not matches:
            raise DataError(f"data path {spec!r} matches no file: check data.paths")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(sorted(q for q in p.rglob("*") if q.is_file() and _supported(q)))
            elif p.is_file():
                out.append(p)
            else:
                raise DataError(f"data path {str(p)!r} does not exist: check data.paths")
    if not out:
        raise DataError(
            f"no .txt/.jsonl/.jsonl.gz/.parquet files under {paths!r}: check data.paths"
        )
    return out


def _supported(p: Path) -> bool:
    n = p.name.lower()
    return n.endswith((".txt", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet"))


MIN_DOCUMENTS = 20  # fewer .txt files than this are cut into paragraphs (split_paragraphs=None)
CHUNK_CHARS = 2000  # a paragraph longer than this is cut at a line boundary (~500 tokens)


TEXT_PROBE_BYTES = 1 << 16
MAX_INVALID_UTF8 = 0.01  # share of undecodable bytes in the probe beyond which it is not text


def check_text_file(path: Path) -> None:
    """A ``.txt`` corpus file must hold text: refuse an empty file and a binary one (NUL
    bytes, or more than 1% of the first 64 KiB undecodable as UTF-8), naming the file."""
    with open(path, "rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    if not head.strip():
        raise DataError(f"{path} is empty: remove it from data.paths or give a file with text")
    text = head.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") / max(1, len(text))
    if b"\x00" in head or invalid > MAX_INVALID_UTF8:
        why = "NUL bytes" if b"\x00" in head else f"{invalid:.0%} of it is not UTF-8"
        raise DataError(f"{path} is not a text file ({why}): data.paths takes text files")


def _paragraphs(path: Path) -> Iterator[str]:
    """Blank-line separated blocks of a text file, read line by line (a large book is never
    held whole); a block longer than ``CHUNK_CHARS`` - or a file without blank lines - is cut
    into chunks at line boundaries."""
    block: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                if block:
                    yield "".join(block).strip()
                block, size = [], 0
                continue
            block.append(line)
            size += len(line)
            if size >= CHUNK_CHARS:
                yield "".join(block).strip()
                block, size = [], 0
    if block and "".join(block).strip():
        yield "".join(block).strip()


def local_documents(
    paths: list[str] | str, text_field: str = "text", split_paragraphs: bool | None = None
) -> Iterator[str]:
    """Documents of local files. A ``.txt`` file is one document, or - with
    ``split_paragraphs``, and by default (``None``) when the source holds fewer than
    ``MIN_DOCUMENTS`` files, e.g. one book - its paragraphs (so both splits get documents)."""
    files = _expand(paths)
    if split_paragraphs is None:
        split_paragraphs = len(files) < MIN_DOCUMENTS
    for p in files:
        name = p.name.lower()
        if name.endswith(".txt"):
            check_text_file(p)
            if split_paragraphs:
                yield from _paragraphs(p)
            else:
                text = p.read_text(encoding="utf-8", errors="replace")
                if text.strip():
                    yield text.strip()
        elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            try:
                with opener(p, "rt", encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            raise DataError(
                                f"{p}:{lineno} is not valid JSON: fix or remove the line"
                            ) from None
                        if text_field not in rec:
                            raise DataError(
                                f"{p}:{lineno} has no field {text_field!r} (fields: {sorted(rec)[:8]}): set data.text_field"
                            )
                        if rec[text_field]:
                            yield str(rec[text_field])
            except (OSError, EOFError) as e:
                raise DataError(f"cannot read {p}: {e}") from None
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            if text_field not in table.column_names:
                raise DataError(
                    f"{p} has no column {text_field!r} (columns: {table.column_names}): set data.text_field"
                )
            for t in table.column(text_field).to_pylist():
                if t:
                    yield str(t)


# ---- hub ------------------------------------------------------------------------------
def _hub_error(name: str, config: str | None, split: str, e: Exception) -> DataError:
    if Path(name).is_dir():
        return DataError(
            f"cannot read split {split!r} of the dataset folder {name} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}): it needs the hub layout, e.g. "
            "data/train-*.parquet and data/validation-*.parquet"
        )
    offline = (
        os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    )
    hint = (
        "unset HF_HUB_OFFLINE and check network access"
        if offline
        else "check network access and the dataset name"
    )
    return DataError(
        f"cannot stream {name!r}/{config} split {split!r} from the Hugging Face hub "
        f"({type(e).__name__}): {hint}, or use data=embedded / data=local"
    )


def _hub_name(cfg: DataConfig, split: str) -> tuple[str, str | None, str]:
    name = cfg.name or ("allenai/c4" if cfg.source == "c4" else None)
    if not name:
        raise DataError("data.source=hf needs data.name (a hub dataset id or a local folder)")
    conf = cfg.config or ("en" if cfg.source == "c4" else None)
    return name, conf, cfg.validation_split if split == "validation" else cfg.train_split


def hub_dataset(cfg: DataConfig, split: str) -> Any:
    """The streaming ``datasets.IterableDataset`` of a hub dataset - or of a local folder in
    the hub layout, through the same call - for ``split``."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - harness dependency
        raise DataError("the 'datasets' package is missing: pip install -e '.[harness]'") from e
    name, conf, hub_split = _hub_name(cfg, split)
    try:
        return datasets.load_dataset(name, conf, split=hub_split, streaming=True)
    except Exception as e:  # datasets raises many types for offline / missing datasets
        raise _hub_error(name, conf, hub_split, e) from None


def dataset_texts(ds: Any, cfg: DataConfig, split: str) -> Iterator[str]:
    """The ``text_field`` of every record of a streaming dataset, with one-line errors."""
    name, conf, hub_split = _hub_name(cfg, split)
    try:
        for rec in ds:
            if cfg.text_field not in rec:
                raise DataError(
                    f"dataset {name!r} has no field {cfg.text_field!r} (fields: {sorted(rec)}): "
                    "set data.text_field"
                )
            if rec[cfg.text_field]:
                yield rec[cfg.text_field]
    except DataError:
        raise
    except Exception as e:
        raise _hub_error(name, conf, hub_split, e) from None


def hub_documents(cfg: DataConfig, split: str) -> Iterator[str]:
    """Stream a hub dataset's documents (network access, a populated cache, or a folder)."""
    yield from dataset_texts(hub_dataset(cfg, split), cfg, split)


def iter_documents(cfg: DataConfig, split: str) -> Iterator[str]:
    """Documents of ``split`` for a data config."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {SPLITS}")
    if cfg.source == "embedded":
        return _split_filter(embedded_documents(), split, cfg.val_fraction)
    if cfg.source == "local":
        if not cfg.paths:
            raise DataError("data.source=local needs data.paths (files, directories or globs)")
        docs = local_documents(cfg.paths, cfg.text_field, cfg.split_paragraphs)
        return _split_filter(docs, split, cfg.val_fraction)
    if cfg.source in ("hf", "c4"):
        return hub_documents(cfg, split)
    raise DataError(f"unknown data source {cfg.source!r}: use embedded, local, hf or c4")


def export_hub_layout(cfg: DataConfig, out: str | Path, train_shards: int = 4) -> Path:
    """Write a source's documents as a local folder in the hub dataset layout
    (``data/train-0000i-of-0000n.parquet``, ``data/validation-00000-of-00001.parquet``), which
    ``datasets.load_dataset(<folder>, streaming=True)`` - the C4 code path - reads offline.
    Written once (a ``.complete`` marker); the rehearsal and the tests stream from it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    if (out / ".complete").exists():
        return out
    (out / "data").mkdir(parents=True, exist_ok=True)
    train = list(iter_documents(cfg, "train"))
    for i in range(train_shards):
        pq.write_table(
            pa.table({"text": train[i::train_shards]}),
            out / "data" / f"train-{i:05d}-of-{train_shards:05d}.parquet",
        )
    val = list(iter_documents(cfg, "validation"))
    pq.write_table(pa.table({"text": val}), out / "data" / "validation-00000-of-00001.parquet")
    (out / ".complete").write_text("ok\n")
    return out
