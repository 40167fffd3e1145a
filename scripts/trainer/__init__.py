"""The trainer, split by concern: ``checks`` (config checks, derived quantities), ``setup``
(building a run), ``step`` (one iteration, evaluation), ``state`` (checkpoints), ``logs``
(metrics, wandb, progress) and ``loop`` (the run). ``python -m scripts.train`` is the CLI."""

from scripts.trainer.checks import (
    EXIT_CONFIG,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    ConfigError,
    grad_accum_steps,
    lr_lambda,
    total_steps,
)
from scripts.trainer.loop import run_training

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
    "ConfigError",
    "grad_accum_steps",
    "lr_lambda",
    "run_training",
    "total_steps",
]
