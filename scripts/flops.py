"""The FLOPs of a training step at a config's shapes, without building the model: the
output layer's size, every parameter's shape, and SOAP's or Shampoo's share of the step's
FLOPs (what wall-clock measured at small shapes says about the paper's 360m, where it is
~1%). Used by the plans (:mod:`scripts.experiments.plan`) and the claims scorecard."""

from __future__ import annotations

from typing import Any

from models.presets import PAPER_VOCAB, get_preset


def output_vocab(cfg: Any) -> int | None:
    """The output layer's rows: the BPE's size, the paper's T5 vocabulary for ``t5``
    tokenizers, else unknown (None) until the tokenizer is loaded."""
    tok = cfg.data.tokenizer
    if tok.kind == "bpe":
        return int(tok.vocab_size)
    return PAPER_VOCAB if "t5" in str(tok.name or "") else None


def param_shapes(preset: Any, vocab: int, qk_norm: bool = True) -> list[tuple[int, ...]]:
    """The shapes of a preset's parameters (models/build.py: OLMo-2 layers, untied input and
    output embeddings), without building the model."""
    d, f = preset.d_model, preset.d_ff
    layer = [(d, d)] * 4 + [(f, d), (f, d), (d, f)] + [(d,)] * (4 if qk_norm else 2)
    return [(vocab, d), *layer * preset.n_layers, (d,), (vocab, d)]


def optimizer_flop_share(cfg: Any, name: str) -> float:
    """FLOPs of ``name``'s step (SOAP or Shampoo, at the regime's precondition frequency and
    dimension cap, refreshes amortised: :meth:`soap._base.PreconditionedOptimizer.param_cost`)
    over the model's FLOPs per step (6 x matmul parameters x tokens, plus attention's
    12 x layers x seq_len x d_model per token). The paper's 360m at 256k tokens: under 2%."""
    import torch

    from soap import SOAP, Shampoo

    p = get_preset(cfg.model.preset)
    vocab = output_vocab(cfg) or PAPER_VOCAB
    r = cfg.regime
    if name == "soap":
        opt = SOAP([torch.zeros(1)], precondition_frequency=r.precondition_frequency,
                   max_precond_dim=r.max_precond_dim)  # fmt: skip
    else:
        opt = Shampoo([torch.zeros(1)], precondition_frequency=r.precondition_frequency,
                      max_preconditioner_dim=r.max_precond_dim)  # fmt: skip
    group = opt.param_groups[0]
    flops = sum(
        opt.param_cost(torch.empty(s, device="meta"), group)[0]
        for s in param_shapes(p, vocab, cfg.model.qk_norm)
    )
    tokens = r.global_batch * r.seq_len
    n = p.non_embedding_params(cfg.model.qk_norm) + vocab * p.d_model
    model = 6 * n * tokens + 12 * p.n_layers * r.seq_len * p.d_model * tokens
    return flops / model
