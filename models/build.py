"""Build a ``transformers`` causal LM from a preset.

Family: OLMo-2 (``Olmo2ForCausalLM``). The paper trains with the OLMo codebase following
Zhao et al. 2024, whose setup uses QK-LayerNorm; OLMo-2 is the ``transformers`` family closest
to that (QK-norm, RMSNorm, SwiGLU, RoPE, no biases, untied embeddings). With ``qk_norm=False``
we build the otherwise-equivalent Llama architecture, which has no QK-norm. z-loss is a loss
term and lives in the trainer (``scripts/train.py``). Models are never downloaded: weights are
initialised from a seed (normal, std ``init_std``, scaled to the width when
``init_std_width`` is set: :func:`models.presets.effective_init_std`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .presets import effective_init_std, get_preset


def build_model(
    preset: str = "tiny",
    vocab_size: int = 32100,
    max_seq_len: int = 1024,
    qk_norm: bool = True,
    init_std: float = 0.02,
    init_std_width: int | None = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    **_: Any,
) -> nn.Module:
    """Return a freshly initialised decoder-only causal LM (same seed, same weights)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Olmo2Config

    p = get_preset(preset)
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    common = dict(
        vocab_size=int(vocab_size),
        hidden_size=p.d_model,
        intermediate_size=p.d_ff,
        num_hidden_layers=p.n_layers,
        num_attention_heads=p.n_heads,
        num_key_value_heads=p.n_heads,
        max_position_embeddings=int(max_seq_len),
        initializer_range=effective_init_std(preset, init_std, init_std_width),
        tie_word_embeddings=False,
        use_cache=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        attention_bias=False,
    )
    config = Olmo2Config(**common) if qk_norm else LlamaConfig(**common, mlp_bias=False)
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    finally:
        torch.set_rng_state(rng_state)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameters (excluding input embedding and output projection)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb}
