"""Is data ever the bottleneck? Tokens/s of the prepare step and of the loader, printed next to
the tokens/s training consumes (a benchmark, not a test).

``python -m scripts.bench_data [--seq-len 128]``

* prepare: a cold prepare of the embedded corpus into a temporary cache (BPE training excluded:
  the tokenizer is trained first and timed separately);
* loader: batches of the ``cpu`` regime and of the paper's small-batch regime read from the
  memmapped shards;
* training: the tiny model's measured fwd+bwd+step tokens/s on this machine, and the 360m
  model's tokens/s estimated from 6 N FLOPs per token at 40% of an H100's bf16 peak (989
  TFLOP/s), unless a GPU is present, where it is measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from data.config import DataConfig
from data.loader import PackedSequences, TrainLoader
from data.prepare import prepare, source_key
from data.sources import iter_documents
from data.tokenizer import load_tokenizer

EMB = DataConfig()  # the embedded corpus, BPE 4096


def _train_tokens_per_s(preset: str, seq_len: int, batch: int, steps: int, device: str) -> float:
    from models import build_model
    from models.loss import lm_loss_from_logits as lm_loss

    model = build_model(
        preset, vocab_size=32100 if preset != "tiny" else 4096, max_seq_len=seq_len
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 4096, (batch, seq_len), device=device)
    ctx = (
        torch.autocast(device, dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with ctx:
            _, loss = lm_loss(model(input_ids=ids).logits, ids, 1e-4)
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
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        t = time.perf_counter()
        load_tokenizer(
            EMB["tokenizer"],
            iter_documents(EMB, "train"),
            cache,
            source_key(EMB),
        )
        t_tok = time.perf_counter() - t
        t = time.perf_counter()
        prep = prepare(EMB, args.seq_len, cache, progress=False)
        t_prep = time.perf_counter() - t
        m = prep.manifest
        tokens = m["splits"]["train"]["tokens"] + m["splits"]["validation"]["tokens"]
        chars = sum(len(d) for split in ("train", "validation") for d in iter_documents(EMB, split))
        docs = m["splits"]["train"]["documents"] + m["splits"]["validation"]["documents"]
        print(
            f"embedded corpus: {chars / 1e6:.2f}M characters, {docs:,} documents, {tokens:,} tokens (BPE {m['tokenizer']['vocab_size']})"
        )
        print(
            f"BPE training: {t_tok:.1f}s; prepare (tokenize + pack + write + checksum): {tokens / t_prep:,.0f} tokens/s ({tokens:,} tokens in {t_prep:.1f}s)"
        )
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
