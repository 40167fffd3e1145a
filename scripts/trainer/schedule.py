"""The learning-rate schedule: linear warm-up, then cosine decay to a fraction of the peak
(the SOAP paper's setup: warm-up then cosine to 10% of the peak, ``configs/train.yaml``'s
``schedule``). A run shortened to ``train.fraction`` of the full length gets its own full
schedule over its own steps, as the paper's schedule-fraction runs do."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_lambda(total: int, warmup_fraction: float, final_fraction: float) -> Callable[[int], float]:
    """Linear warmup then cosine decay to ``final_fraction`` of the peak, over ``total`` steps."""
    warmup = max(1, round(warmup_fraction * total)) if warmup_fraction > 0 else 0

    def f(step: int) -> float:  # step = number of optimizer steps already taken
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def scheduler(
    opt: Optimizer, steps: int, warmup_fraction: float, final_fraction: float
) -> LambdaLR:
    """The schedule of a run of ``steps`` iterations, on every param group of ``opt``."""
    return LambdaLR(opt, lr_lambda(steps, warmup_fraction, final_fraction))
