"""Model size presets, named by non-embedding parameters as in the SOAP paper's appendix.

The paper (Vyas et al. 2024) trains 210m, 360m and 660m models with the OLMo codebase but does
not state the exact shapes we could read; these are OLMo-style choices: head dim 64 or 128,
width a multiple of 128, SwiGLU MLP with a hidden width near 8/3 d rounded to 128, no biases.
"Non-embedding" excludes the input embedding and the output projection (vocabulary 32100, T5).
``python -m models.presets`` prints the table in the README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PAPER_VOCAB = 32100


@dataclass
class ModelConfig:
    """The ``model`` config group's schema."""

    preset: str = "tiny"
    qk_norm: bool = True  # OLMo-2 with QK-norm (Zhao et al. 2024 setup); False: Llama
    init_std: float = 0.02
    # The width at which ``init_std`` holds; set, other widths get init_std * sqrt(w / d_model),
    # a fan-in init (README, "The CPU regime": the ladder models keep the 360m's std x sqrt(d)).
    init_std_width: int | None = None


@dataclass(frozen=True)
class ModelPreset:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    nominal: int | None = None  # the size in the name (non-embedding params)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def non_embedding_params(self, qk_norm: bool = True) -> int:
        d, f = self.d_model, self.d_ff
        per_layer = 4 * d * d + 3 * d * f + 2 * d + (2 * d if qk_norm else 0)
        return self.n_layers * per_layer + d  # + final norm

    def total_params(self, vocab_size: int = PAPER_VOCAB, qk_norm: bool = True) -> int:
        return self.non_embedding_params(qk_norm) + 2 * vocab_size * self.d_model


PRESETS: dict[str, ModelPreset] = {
    # A few million parameters (most of them embeddings): trains on a 2-core CPU in minutes.
    "tiny": ModelPreset("tiny", d_model=128, n_layers=4, n_heads=2, d_ff=384),
    # The CPU regime's models (README, "The CPU regime"): the demo's 107k and the ladder of
    # configs/study/cpu_ladder.yaml, 12k - 40k - 107k non-embedding parameters (9x), width
    # and depth growing together; d_ff near 2.5-3 d as in the larger presets.
    "ladder12k": ModelPreset("ladder12k", d_model=32, n_layers=1, n_heads=1, d_ff=80),
    "ladder40k": ModelPreset("ladder40k", d_model=40, n_layers=2, n_heads=1, d_ff=112),
    "ladder100k": ModelPreset("ladder100k", d_model=64, n_layers=2, n_heads=1, d_ff=192),
    "ladder300k": ModelPreset("ladder300k", d_model=96, n_layers=3, n_heads=2, d_ff=256),
    "210m": ModelPreset(
        "210m", d_model=1024, n_layers=16, n_heads=16, d_ff=2816, nominal=210_000_000
    ),
    "360m": ModelPreset(
        "360m", d_model=1280, n_layers=18, n_heads=20, d_ff=3456, nominal=360_000_000
    ),
    "660m": ModelPreset(
        "660m", d_model=1536, n_layers=24, n_heads=24, d_ff=3968, nominal=660_000_000
    ),
}


def effective_init_std(preset: str, init_std: float, init_std_width: int | None) -> float:
    """The weights' initial std: ``init_std``, or with ``init_std_width`` set, the std that keeps
    ``init_std * sqrt(init_std_width)`` = std * sqrt(d_model) (a fan-in init, 1/sqrt(width) as
    muP's hidden weights). OLMo-2's 0.02 at the 360m's width 1280 is 0.72/sqrt(d); at the CPU
    ladder's width 40 the same 0.02 would be 6x smaller against the width, and it slowed AdamW
    (not SOAP or Shampoo) enough to inflate their savings (README, "The CPU regime")."""
    if init_std_width is None:
        return float(init_std)
    if init_std_width < 1:
        raise ValueError(f"model.init_std_width must be a positive width, got {init_std_width}")
    return float(init_std) * math.sqrt(init_std_width / get_preset(preset).d_model)


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[str(name)]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}: choose one of {sorted(PRESETS)}"
        ) from None


def table_markdown(vocab_size: int = PAPER_VOCAB) -> str:
    rows = [
        "| preset | d_model | layers | heads (dim) | d_ff | non-embedding | total (vocab 32100) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PRESETS.values():
        rows.append(
            f"| {p.name} | {p.d_model} | {p.n_layers} | {p.n_heads} ({p.head_dim}) | {p.d_ff} | "
            f"{p.non_embedding_params() / 1e6:.1f}M | {p.total_params(vocab_size) / 1e6:.1f}M |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table_markdown())
