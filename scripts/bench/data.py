"""Is data ever the bottleneck, and does preparing it scale? Side by side in one run (a
benchmark, not a test): ``python -m scripts.bench.data [--tokens 10e6 50e6] [--seq-len 128]``.

* prepare throughput with 1 and 2 tokenizer workers on the same local corpus (``.jsonl`` made
  from the embedded text, every document numbered so that none repeats), BPE training
  excluded (the tokenizer is trained once and reused);
* peak memory of the prepare at two corpus sizes (main process, and the largest worker),
  each prepare in a fresh process;
* the loader's tokens/s against what training consumes (the tiny model measured here; the
  360m model measured on a GPU when there is one, else estimated from 6 N FLOPs per token at
  40% of an H100's bf16 peak), and the time per billion tokens per core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from data.config import DataConfig
from data.loader import PackedSequences, TrainLoader
from data.prepare import prepare, source_key
from data.sources import iter_documents
from data.tokenizer import bpe_path, load_tokenizer

EMB = DataConfig()  # the embedded corpus, BPE 4096


def make_corpus(out: Path, tokens: float) -> Path:
    """A ``.jsonl`` of about ``tokens`` tokens: the embedded documents, numbered, repeated."""
    docs = list(iter_documents(EMB, "train")) + list(iter_documents(EMB, "validation"))
    per_pass = 440_000  # tokens of the embedded corpus with the 4096 BPE (bench prints it)
    passes = max(1, round(tokens / per_pass))
    path = out / f"corpus-{int(tokens / 1e6)}M.jsonl"
    with open(path, "w") as f:
        for k in range(passes):
            for i, d in enumerate(docs):
                f.write(json.dumps({"text": f"[{k}.{i}] {d}"}) + "\n")
    return path


def local_cfg(path: Path, num_proc: int) -> DataConfig:
    return DataConfig(source="local", paths=[str(path)], num_proc=num_proc, verify="size")


def seed_tokenizer(cfg: DataConfig, cache: Path, trained: Path) -> None:
    """Put the BPE trained once where the prepare of ``cfg`` looks for it."""
    dst = bpe_path(cfg.tokenizer, cache, source_key(cfg))
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained, dst)


def prepare_in_child(cfg_json: str, seq_len: int, cache: str) -> None:
    """Run in a fresh process: prepare, then report seconds, tokens and peak memory."""
    import resource

    cfg = DataConfig.from_dict(json.loads(cfg_json))
    t = time.perf_counter()
    prep = prepare(cfg, seq_len, cache, progress=False)
    dt = time.perf_counter() - t
    m = prep.manifest["splits"]
    with open("/proc/self/status") as f:
        hwm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM"))
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    tokens = m["train"]["tokens"] + m["validation"]["tokens"]
    print(json.dumps({"seconds": dt, "tokens": tokens, "main_peak": hwm, "worker_peak": child}))


def run_child(cfg: DataConfig, seq_len: int, cache: Path) -> dict:
    import dataclasses

    d = dataclasses.asdict(cfg)
    code = (
        "import sys, json; from scripts.bench.data import prepare_in_child; "
        "prepare_in_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, json.dumps(d), str(seq_len), str(cache)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    if r.returncode:
        raise SystemExit(f"error: prepare failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _train_tokens_per_s(preset: str, seq_len: int, batch: int, steps: int, device: str) -> float:
    from models import build_model
    from models.loss import CausalLMWithLoss

    vocab = 32100 if preset != "tiny" else 4096
    model = CausalLMWithLoss(build_model(preset, vocab_size=vocab, max_seq_len=seq_len), 1e-4).to(
        device
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    ctx = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with ctx:
            _, loss = model(ids)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return batch * seq_len / (sum(times[1:]) / steps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--tokens", nargs=2, type=float, default=[10e6, 50e6], help="two corpus sizes")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        tok = load_tokenizer(EMB.tokenizer, iter_documents(EMB, "train"), tmp, source_key(EMB))
        print(
            f"BPE training ({tok.vocab_size} tokens, embedded corpus): {time.perf_counter() - t:.1f}s"
        )
        trained = Path(tok.source)
        small, large = (make_corpus(tmp, n) for n in args.tokens)
        rows = []
        for path, workers in ((small, 1), (small, 2), (large, 2)):
            cache = tmp / f"cache-{path.stem}-{workers}"
            cfg = local_cfg(path, workers)
            seed_tokenizer(cfg, cache, trained)
            r = run_child(cfg, args.seq_len, cache)
            rows.append((path.stem, workers, r))
            print(f"  prepared {path.stem} with {workers} worker(s)", flush=True)
        print(
            "\n| corpus | workers | tokens | seconds | tokens/s | main peak MiB | worker peak MiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, w, r in rows:
            print(
                f"| {name} | {w} | {r['tokens'] / 1e6:.1f}M | {r['seconds']:.1f} | "
                f"{r['tokens'] / r['seconds']:,.0f} | {r['main_peak'] / 2**20:.0f} | "
                f"{r['worker_peak'] / 2**20:.0f} |"
            )
        one, two, big = (r for _, _, r in rows)
        speedup = (two["tokens"] / two["seconds"]) / (one["tokens"] / one["seconds"])
        print(f"\n2 workers vs 1: {speedup:.2f}x tokens/s")
        print(
            f"peak memory, {rows[2][0]} vs {rows[1][0]} (2 workers): main "
            f"{big['main_peak'] / two['main_peak']:.2f}x, worker {big['worker_peak'] / two['worker_peak']:.2f}x "
            f"for {big['tokens'] / two['tokens']:.1f}x the tokens"
        )
        per_core = 1e9 / (one["tokens"] / one["seconds"]) / 3600
        print(f"time per billion tokens per core (1 worker): {per_core:.2f} h")
        prep = prepare(EMB, args.seq_len, tmp / "emb", progress=False)
        data = PackedSequences(prep, "train")
        for name, micro, accum in (
            ("cpu regime (16 x seq)", 16, 1),
            ("small-batch regime (256 x seq)", 16, 16),
        ):
            loader = TrainLoader(data, micro, accum)
            n = 0
            t = time.perf_counter()
            while time.perf_counter() - t < 2.0:
                n += sum(b.numel() for b in loader.next())
            print(f"loader, {name}: {n / (time.perf_counter() - t):,.0f} tokens/s")
    tiny = _train_tokens_per_s("tiny", args.seq_len, 16, 5, "cpu")
    print(f"training consumes, tiny on this CPU (AdamW, fp32): {tiny:,.0f} tokens/s (measured)")
    if torch.cuda.is_available():
        big = _train_tokens_per_s("360m", 1024, 16, 5, "cuda")
        print(
            f"training consumes, 360m on {torch.cuda.get_device_name()} (bf16): {big:,.0f} tokens/s (measured)"
        )
    else:
        from models.presets import get_preset

        n = get_preset("360m").total_params()
        est = 0.4 * 989e12 / (6 * n)
        print(
            f"training consumes, 360m on one H100 (bf16): ~{est:,.0f} tokens/s (estimated: 6N FLOPs/token at 40% of 989 TFLOP/s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
