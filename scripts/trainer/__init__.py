"""The trainer, split by concern: ``checks`` (config checks, derived quantities), ``setup``
(building a run) and ``run`` (what it built, typed, with the loop's state), ``schedule``
(the LR schedule), ``shard`` (FSDP2/HSDP), ``step`` (one iteration, evaluation), ``state``
(checkpoints), ``rundir`` (the run directory), ``identity`` (same run or not), ``plan``
(cost before commitment), ``logs`` (metrics, wandb, progress), ``memory`` (peak memory),
``summary`` (the run record), ``runinfo`` (provenance) and ``loop`` (the run, top to bottom).
``python -m scripts.train`` is the CLI."""

from scripts.trainer.checks import (
    EXIT_CONFIG,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    ConfigError,
    grad_accum_steps,
    total_steps,
)
from scripts.trainer.loop import run_training
from scripts.trainer.schedule import lr_lambda

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
