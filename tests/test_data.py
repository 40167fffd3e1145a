"""Sources, tokenizer, prepare (cache, manifest, errors) and the loaders."""

import gzip
import json
import os
from itertools import islice

import numpy as np
import pytest
import torch

from data.config import DataConfig, DataError
from data.loader import Loader, PackedSequences, TrainLoader, validation_batches
from data.prepare import _dtype_for, prepare, verify
from data.sources import embedded_documents, iter_documents

EMB = DataConfig()  # embedded, 5% validation, BPE 4096


def D(**kw) -> DataConfig:
    return DataConfig.from_dict(kw)


@pytest.fixture(scope="module")
def prepared(cache_dir):
    return prepare(EMB, 64, cache_dir, progress=False)


def test_embedded_corpus_is_deterministic_english():
    a = list(islice(embedded_documents(), 50))
    b = list(islice(embedded_documents(), 50))
    assert a == b and all(len(d) >= 200 for d in a)
    total = sum(len(d) for d in embedded_documents())
    assert total > 1_000_000


def test_split_never_leaks():
    train = set(iter_documents(EMB, "train"))
    val = set(iter_documents(EMB, "validation"))
    assert val and train and not (train & val)


def test_prepare_manifest_and_cache_reuse(prepared, cache_dir):
    m = prepared.manifest
    assert m["tokenizer"]["vocab_size"] == 4096 and m["dtype"] == "uint16" and m["seq_len"] == 64
    assert m["splits"]["train"]["sequences"] > 1000 and m["splits"]["validation"]["sequences"] > 10
    shard = prepared.root / m["splits"]["train"]["shards"][0]["file"]
    mtime = shard.stat().st_mtime_ns
    again = prepare(EMB, 64, cache_dir, progress=False)
    assert again.root == prepared.root and shard.stat().st_mtime_ns == mtime
    seqs = PackedSequences(prepared, "train")
    x = seqs.get([0, 1])
    assert x.shape == (2, 64) and int(x.max()) < 4096
    assert (seqs.get(range(len(seqs))) == m["tokenizer"]["eos_id"]).any()  # end-of-document tokens


def test_corrupt_shard_is_detected(prepared, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(prepared.root, root)
    shard = root / prepared.manifest["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        verify(root, prepared.manifest)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="bytes"):
        verify(root, prepared.manifest, full=False)
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        verify(root, prepared.manifest)


def _local_corpus(tmp_path):
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "optimizers",
        "rotate",
        "gradients",
    ]
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, size=120)) for _ in range(120)]
    (tmp_path / "a.txt").write_text(docs[0])
    with open(tmp_path / "b.jsonl", "w") as f:
        for d in docs[1:60]:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        for d in docs[60:100]:
            f.write(json.dumps({"text": d}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs[100:]}), tmp_path / "d.parquet")
    return docs


def test_local_sources_all_formats(tmp_path, cache_dir):
    docs = _local_corpus(tmp_path)
    cfg = D(source="local", paths=[str(tmp_path)], val_fraction=0.1)
    got = list(iter_documents(cfg, "train")) + list(iter_documents(cfg, "validation"))
    assert sorted(got) == sorted(docs)
    glob_cfg = D(source="local", paths=[str(tmp_path / "*.jsonl*")])
    assert (
        len(list(iter_documents(glob_cfg, "train")))
        + len(list(iter_documents(glob_cfg, "validation")))
        == 99
    )
    cfg.tokenizer.vocab_size = 300
    prep = prepare(cfg, 16, cache_dir, progress=False)
    assert prep.manifest["splits"]["train"]["sequences"] > 0


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"source": "local", "paths": ["/nonexistent/x.txt"]}, "does not exist"),
        ({"source": "local", "paths": ["/nonexistent/*.jsonl"]}, "matches no file"),
        ({"source": "local"}, "needs data.paths"),
        ({"source": "nope"}, "unknown data source"),
        ({"sauce": "local"}, "unknown data option"),
    ],
)
def test_bad_sources(cfg, match):
    with pytest.raises(DataError, match=match):
        list(iter_documents(D(**cfg), "train"))


def test_missing_text_field_and_empty_corpus(tmp_path, cache_dir):
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(DataError, match="no field 'text'"):
        list(iter_documents(D(source="local", paths=[str(tmp_path / "x.jsonl")]), "train"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "e.txt").write_text("   ")
    with pytest.raises(DataError):
        prepare(
            D(source="local", paths=[str(empty)], tokenizer={"kind": "bpe", "vocab_size": 300}),
            16,
            cache_dir,
            progress=False,
        )


def test_vocab_too_large_for_dtype():
    with pytest.raises(DataError, match="does not fit uint16"):
        _dtype_for(70000, "uint16")
    assert _dtype_for(70000).name == "uint32" and _dtype_for(32100).name == "uint16"


def test_hub_source_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="Hugging Face hub"):
        next(iter(iter_documents(D(source="c4"), "train")))


def test_pretrained_tokenizer_offline_gives_clear_error(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = D(tokenizer={"kind": "pretrained", "name": "definitely-not-cached/tokenizer"})
    with pytest.raises(DataError, match="cannot load tokenizer"):
        prepare(cfg, 64, cache_dir / "other", progress=False)


def test_loader_is_deterministic_resumable_and_rank_disjoint(prepared):
    data = PackedSequences(prepared, "train")
    one = TrainLoader(data, micro_batch=2, grad_accum=2, world_size=2, rank=0, seed=7)
    a = [torch.cat(one.next()) for _ in range(5)]
    state = one.state_dict()
    a_next = torch.cat(one.next())
    again = TrainLoader(data, micro_batch=2, grad_accum=2, world_size=2, rank=0, seed=7)
    again.load_state_dict(state)
    assert torch.equal(torch.cat(again.next()), a_next)
    # Ranks take disjoint parts; together they are the single-process global batch.
    r0 = TrainLoader(data, 2, 2, 2, 0, seed=7)
    r1 = TrainLoader(data, 2, 2, 2, 1, seed=7)
    single = TrainLoader(data, 2, 4, 1, 0, seed=7)
    for _ in range(3):
        x0, x1, s = torch.cat(r0.next()), torch.cat(r1.next()), torch.cat(single.next())
        rows0 = {tuple(r.tolist()) for r in x0}
        rows1 = {tuple(r.tolist()) for r in x1}
        assert not rows0 & rows1
        assert rows0 | rows1 == {tuple(r.tolist()) for r in s}
    assert not torch.equal(a[0], a[1])


def test_loader_wraps_epochs_and_validation_is_fixed(prepared):
    data = PackedSequences(prepared, "train")
    loader = TrainLoader(data, micro_batch=len(data) // 2, grad_accum=1)
    for _ in range(3):
        loader.next()
    assert loader.epoch == 1
    val = PackedSequences(prepared, "validation")
    v1 = validation_batches(val, 8, 4)
    v2 = validation_batches(val, 8, 4)
    assert (
        all(torch.equal(x, y) for x, y in zip(v1, v2, strict=True)) and sum(len(x) for x in v1) == 8
    )
    with pytest.raises(DataError, match="exceeds"):
        TrainLoader(data, micro_batch=len(data) + 1, grad_accum=1)


def _book(path, paragraphs=300, blank_lines=True):
    rng = np.random.default_rng(1)
    words = [
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "that",
        "was",
        "he",
        "it",
        "his",
        "with",
        "as",
        "had",
        "for",
        "on",
        "at",
        "by",
        "her",
        "you",
    ]
    sep = "\n\n" if blank_lines else "\n"
    text = sep.join(
        " ".join(rng.choice(words, size=int(rng.integers(40, 120)))) + "."
        for _ in range(paragraphs)
    )
    path.write_text(text)
    return path


@pytest.mark.parametrize("blank_lines", [True, False])
def test_one_text_file_is_cut_so_both_splits_exist(tmp_path, cache_dir, blank_lines):
    """A book as one plain-text file trains as given (no flag): it is cut into paragraphs, or
    fixed-size chunks when it has no blank lines."""
    book = _book(tmp_path / "book.txt", paragraphs=600, blank_lines=blank_lines)
    cfg = D(source="local", paths=[str(book)], tokenizer={"kind": "bpe", "vocab_size": 300})
    train, val = list(iter_documents(cfg, "train")), list(iter_documents(cfg, "validation"))
    assert len(train) > 10 and len(val) >= 1 and not set(train) & set(val)
    prep = prepare(cfg, 32, cache_dir, progress=False)
    assert prep.manifest["splits"]["validation"]["sequences"] > 0
    whole = D(
        source="local",
        paths=[str(book)],
        split_paragraphs=False,
        tokenizer={"kind": "bpe", "vocab_size": 300},
    )
    assert (
        len(list(iter_documents(whole, "train"))) + len(list(iter_documents(whole, "validation")))
        == 1
    )


def test_too_small_validation_split_names_a_fix_that_works(tmp_path, cache_dir):
    book = _book(tmp_path / "book.txt", paragraphs=400)
    cfg = D(
        source="local",
        paths=[str(book)],
        split_paragraphs=False,
        tokenizer={"kind": "bpe", "vocab_size": 300},
    )
    with pytest.raises(DataError, match="split_paragraphs=true") as e:
        prepare(cfg, 32, cache_dir, progress=False)
    assert "\n" not in str(e.value)
    fixed = D(
        source="local",
        paths=[str(book)],
        split_paragraphs=True,
        tokenizer={"kind": "bpe", "vocab_size": 300},
    )
    assert (
        prepare(fixed, 32, cache_dir, progress=False).manifest["splits"]["validation"]["sequences"]
        > 0
    )


def test_parallel_prepare_writes_the_same_shards(tmp_path):
    """Two tokenizer workers produce byte-identical shards to one (order is kept)."""
    book = _book(tmp_path / "book.txt", paragraphs=600)
    roots = []
    for n in (1, 2):
        cfg = D(
            source="local",
            paths=[str(book)],
            num_proc=n,
            batch_docs=16,
            tokenizer={"kind": "bpe", "vocab_size": 300},
        )
        roots.append(prepare(cfg, 32, tmp_path / f"cache{n}", progress=False))
    a, b = (r.manifest["splits"] for r in roots)
    assert [s["sha256"] for s in a["train"]["shards"]] == [
        s["sha256"] for s in b["train"]["shards"]
    ]
    assert a["train"]["tokens"] == b["train"]["tokens"] > 10_000


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    from data.sources import export_hub_layout

    return export_hub_layout(EMB, tmp_path_factory.mktemp("hub") / "embedded-hub", train_shards=2)


def test_hub_layout_folder_goes_through_the_hub_code_path(hub_folder, cache_dir):
    """data=hf data.name=<folder>: datasets.load_dataset(<folder>, streaming=True), offline."""
    cfg = D(source="hf", name=str(hub_folder), tokenizer={"kind": "bpe", "vocab_size": 512})
    docs = list(iter_documents(cfg, "train"))
    assert len(docs) == len(list(iter_documents(EMB, "train")))
    assert list(iter_documents(cfg, "validation")) == list(iter_documents(EMB, "validation"))
    prep = prepare(cfg, 64, cache_dir, progress=False)
    assert prep.manifest["splits"]["train"]["sequences"] > 1000
    bad = D(source="hf", name=str(hub_folder / "data"), validation_split="nope")
    with pytest.raises(DataError, match="hub layout"):
        list(iter_documents(bad, "validation"))


def test_stream_mode_validation_equals_prepared_and_resumes_exactly(hub_folder, cache_dir):
    from data.pipeline import build_data

    cfg = D(
        source="hf",
        name=str(hub_folder),
        batch_docs=8,
        tokenizer={"kind": "bpe", "vocab_size": 512},
    )
    kw = dict(
        seq_len=64,
        cache_dir=cache_dir,
        train_tokens=10**6,
        micro_batch=4,
        grad_accum=2,
        world_size=1,
        rank=0,
        seed=0,
        eval_sequences=24,
        eval_batch_size=10,
        progress=False,
    )
    prepared = build_data(cfg, **kw)
    stream = build_data(D(**{**vars(cfg), "tokenizer": cfg.tokenizer, "mode": "stream"}), **kw)
    assert prepared.vocab_size == stream.vocab_size
    assert all(
        torch.equal(a, b) for a, b in zip(prepared.validation, stream.validation, strict=True)
    )
    loader = stream.loader
    # Both loaders are what the trainer declares it needs (data.loader.Loader).
    assert isinstance(loader, Loader) and isinstance(prepared.loader, Loader)
    assert loader.per_rank_state and not prepared.loader.per_rank_state
    for _ in range(3):
        loader.next()
    state = loader.state_dict()
    expected = [torch.cat(loader.next()) for _ in range(4)]
    again = build_data(
        D(**{**vars(cfg), "tokenizer": cfg.tokenizer, "mode": "stream"}), **kw
    ).loader
    again.load_state_dict(state)
    assert all(torch.equal(e, torch.cat(again.next())) for e in expected)


def test_byte_level_vocabulary_of_257_is_plain_bytes(tmp_path):
    """The CPU regime's vocabulary (configs/experiment/demo.yaml): 256 bytes and the
    end-of-document token, no merges; one fewer is refused in one line."""
    from data.config import DataError, TokenizerConfig
    from data.tokenizer import load_tokenizer

    docs = ["héllo world, the quick brown fox " * 20] * 30
    tok = load_tokenizer(TokenizerConfig(vocab_size=257), iter(docs), tmp_path, "k")
    assert tok.vocab_size == 257 and 0 <= tok.eos_id < 257
    text = "héllo"
    assert len(tok.encode_batch([text])[0]) == len(text.encode())  # one token per byte
    with pytest.raises(DataError, match=r"vocab_size=256 is too small.*>= 257"):
        load_tokenizer(TokenizerConfig(vocab_size=256), iter(docs), tmp_path, "k")


def test_data_seed_sets_the_order_alone(tmp_path, cache_dir):
    """``data_seed`` fixes which batches a run sees while ``seed`` draws the init; unset, the
    seed sets both (as before it existed). Same init, so the first step's loss differs only
    by its batch."""
    from tests.helpers import metrics, run_inprocess

    def losses(name: str, *over: str) -> list[float]:
        d = tmp_path / name
        assert run_inprocess(["train.max_steps=3", "train.eval_every=3", f"run_dir={d}", *over], cache_dir) == 0  # fmt: skip
        return [m["loss"] for m in metrics(d) if "loss" in m]

    base = losses("seed0")
    assert losses("explicit", "data_seed=0") == base
    other_order = losses("order1", "data_seed=1")
    assert other_order[0] != base[0]
    # another init on seed 0's batches: not seed 1's run (its order differs too)
    assert losses("init1_order0", "seed=1", "data_seed=0") != losses("seed1", "seed=1")


def test_two_preparations_at_once_both_succeed_on_one_copy(tmp_path):
    """Two runs started at once on a cold cache both prepare the same data: each in its own
    folder, the first to finish publishes and the other uses that copy (a shared ".tmp"
    folder had one delete the other's files: FileNotFoundError mid-write)."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = D(tokenizer={"vocab_size": 257}, max_tokens=200_000)  # bytes: no tokenizer to train
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: prepare(cfg, 64, tmp_path, progress=False), range(2))
    assert a.root == b.root and a.manifest["splits"] == b.manifest["splits"]
    assert [p.name for p in a.root.parent.iterdir()] == [a.root.name]  # no folder left behind
    verify(a.root, a.manifest, full=True)


def test_a_killed_preparation_leaves_nothing_behind(tmp_path):
    """A preparation killed mid-write leaves its own folder; the next preparation on this host
    removes it once its process is gone, and leaves a live one's alone."""
    import subprocess

    from data.prepare import _HOST, prepared_root

    cfg = D(tokenizer={"vocab_size": 257}, max_tokens=20_000)
    root = prepared_root(cfg, 64, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = root.with_name(f"{root.name}.tmp-{_HOST}-{dead.pid}-1")
    alive = root.with_name(f"{root.name}.tmp-{_HOST}-{os.getpid()}-1")
    for d in (gone, alive):
        d.mkdir(parents=True)
        (d / "train-00000.bin").write_bytes(b"partial")
    prepare(cfg, 64, tmp_path, progress=False)
    assert not gone.exists() and alive.exists()
