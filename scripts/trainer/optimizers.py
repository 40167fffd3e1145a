"""What optimizers from other libraries need from the trainer, done once, generically.

* **Evaluation weights** (Schedule-Free, Defazio et al. 2024): an optimizer with ``eval()`` and
  ``train()`` keeps training weights that are not the weights to evaluate. The trainer calls
  ``eval()`` before every evaluation and ``train()`` after. Checkpoints hold the training
  weights and the optimizer's state (its ``z`` sequence), as the loop left them: switching
  to the evaluation weights and back is not exact in floating point, so a checkpoint taken
  inside such a round trip (at a signal, say) would make the resumed run differ from the
  uninterrupted one by rounding. To evaluate a checkpoint, load it and call ``eval()``;
  ``train()`` after a resume is a no-op unless the checkpoint was taken in evaluation mode.
* **A schedule to drive**: the LR schedule sets ``param_groups[i]["lr"]``; an optimizer without
  ``param_groups`` is refused in one line.
* **Sharded parameters**: under FSDP2/HSDP each rank holds row shards. Our optimizers gather a
  parameter to its owner (:mod:`soap.distributed`); an elementwise optimizer gives the same
  result on shards; any other (a factored or matrix preconditioner: Adafactor, PSGD-Kron,
  other SOAPs) would precondition each shard on its own, silently, so it is refused in one
  line naming DDP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from scripts.trainer.checks import ConfigError

# Elementwise updates (each entry from its own gradient and state): correct on FSDP2 shards.
ELEMENTWISE = {
    "torch.optim.adamw.AdamW",
    "torch.optim.adam.Adam",
    "torch.optim.sgd.SGD",
    "schedulefree.adamw_schedulefree.AdamWScheduleFree",
    "pytorch_optimizer.optimizer.lion.Lion",
    "pytorch_optimizer.optimizer.ademamix.AdEMAMix",
}


def _inner(opt: Any) -> Any:
    return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps one


def has_eval_weights(opt: Any) -> bool:
    inner = _inner(opt)
    return callable(getattr(inner, "eval", None)) and callable(getattr(inner, "train", None))


@contextlib.contextmanager
def eval_weights(opt: Any) -> Iterator[None]:
    """The model holds the optimizer's evaluation weights inside the block."""
    if not has_eval_weights(opt):
        yield
        return
    _inner(opt).eval()
    try:
        yield
    finally:
        _inner(opt).train()


def training_weights(opt: Any) -> None:
    """After a resume: the checkpoint held the evaluation weights; back to training ones."""
    if has_eval_weights(opt):
        _inner(opt).train()


def check_schedulable(opt: Any, name: str) -> None:
    if not isinstance(getattr(opt, "param_groups", None), list):
        raise ConfigError(
            f"optimizer {name} has no param_groups for the LR schedule to set: give it a "
            "torch.optim.Optimizer interface, or wrap it in one"
        )


def check_shardable(cls: Any, name: str, ours: tuple[type, ...]) -> None:
    """Refuse an optimizer that cannot step FSDP2 shards correctly (see the module doc)."""
    if isinstance(cls, type) and issubclass(cls, ours):
        return
    path = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    if path in ELEMENTWISE:
        return
    raise ConfigError(
        f"optimizer {name} ({path}) under FSDP2/HSDP would precondition each rank's parameter "
        "shard on its own (it is not elementwise, and has no distributed mode): run it with "
        "DDP (train.fsdp=false, train.dp_replicate=1)"
    )
