"""The parameter sets and optimizer configurations the benchmarks share
(:mod:`scripts.bench.optimizer`, :mod:`scripts.bench.distributed`): GPT-shaped parameter
lists and our optimizers configured alike."""

from __future__ import annotations

from collections.abc import Callable

import torch

from soap import SOAP, Shampoo

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def gpt_shapes(d: int, d_ff: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        shapes += [(f"layers.{i}.{n}", (d, d)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        shapes += [(f"layers.{i}.{n}", (d_ff, d)) for n in ("gate_proj", "up_proj")]
        shapes += [(f"layers.{i}.down_proj", (d, d_ff))]
        shapes += [(f"layers.{i}.{n}", (d,)) for n in ("attn_norm", "mlp_norm", "q_norm", "k_norm")]
    shapes += [("norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    return shapes


SHAPE_SETS = {
    "cpu": dict(d=256, d_ff=1024, layers=4, vocab=32100),
    "360m": dict(d=1280, d_ff=3456, layers=2, vocab=32100),
}
COMMON = dict(lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01)


def ours(freq: int, max_dim: int) -> dict[str, Factory]:
    def soap(**kw):
        return lambda ps: SOAP(
            ps, precondition_frequency=freq, max_precond_dim=max_dim, **COMMON, **kw
        )

    return {
        "adamw": lambda ps: torch.optim.AdamW(ps, eps=1e-8, **COMMON, foreach=True),
        "shampoo": lambda ps: Shampoo(
            ps,
            precondition_frequency=freq,
            start_preconditioning_step=1,
            max_preconditioner_dim=max_dim,
            **COMMON,
        ),
        "soap": soap(),
        "soap (plain per-tensor)": soap(foreach=False),
        "soap one-sided": soap(one_sided=True),
        "soap factorized": soap(factorized=True),
        "soap one-sided+factorized": soap(one_sided=True, factorized=True),
    }
