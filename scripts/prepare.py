"""Prepare the data a run would train on, before launching it (``scripts.reproduce`` calls
this once, so no rank of a multi-GPU run waits for tokenization).

``python -m scripts.prepare experiment=paper_360m_small_batch`` or any training overrides
(``data=local data.paths=[book.txt] regime.seq_len=256``); prints what was prepared."""

from __future__ import annotations

import sys

from data.config import DataError
from scripts.cli import wants_help


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from data.pipeline import prepare_shared
    from models.presets import get_preset
    from scripts.config import compose, error_line
    from scripts.trainer.checks import total_steps

    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args, __doc__):
        return 0
    try:
        cfg = compose([*args, "run_dir=."])
    except Exception as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    data = OmegaConf.to_object(cfg.data)
    full, _ = total_steps(cfg, get_preset(cfg.model.preset).non_embedding_params(cfg.model.qk_norm))
    if data.mode == "stream":  # nothing to prepare but the tokenizer
        import dataclasses

        from data.prepare import tokenizer_for

        tokens = full * cfg.regime.global_batch * cfg.regime.seq_len
        try:
            tok = tokenizer_for(
                dataclasses.replace(data, max_tokens=data.max_tokens or tokens), cfg.cache_dir
            )
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"streamed data: tokenizer {tok.name} ready (vocabulary {tok.vocab_size})")
        return 0
    try:
        prep = prepare_shared(
            data,
            cfg.regime.seq_len,
            cfg.cache_dir,
            is_main=True,
            progress=sys.stdout.isatty(),
            train_tokens=full * cfg.regime.global_batch * cfg.regime.seq_len,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = prep.manifest
    print(
        f"prepared {prep.root}: vocab {m['tokenizer']['vocab_size']}, seq_len {m['seq_len']}, "
        + ", ".join(
            f"{s} {m['splits'][s]['sequences']} seqs / {m['splits'][s]['tokens']} tokens"
            for s in ("train", "validation")
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
