"""The run being trained: what :func:`scripts.trainer.setup.setup` built and what the loop
advances, with the loop's own state as ``state_dict``/``load_state_dict`` (the ``trainer``
entry of every checkpoint, :mod:`scripts.trainer.state`), as torchtitan's trainer is
``Stateful``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from data.loader import Loader
from models.loss import CausalLMWithLoss
from scripts.clock import TargetTracker, TrainClock


@dataclass
class Run:
    cfg: DictConfig  # a resolved RunConfig (scripts/config.py)
    run_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared: DDP-wrapped, or FSDP2/HSDP-sharded in place
    raw_model: CausalLMWithLoss
    optimizer: Optimizer
    scheduler: LambdaLR
    loader: Loader
    val: list[torch.Tensor]  # this rank's part of the fixed validation set
    data_info: dict[str, Any]  # root, manifest (without per-shard lists), vocab_size
    full_steps: int  # iterations of the full-length run (train.fraction = 1)
    steps: int  # iterations of this run
    accum: int  # micro-batches per iteration on each rank
    params: dict[str, int]  # total, non_embedding
    clock: TrainClock
    tracker: TargetTracker
    step: int = 0  # iterations taken
    bad_steps: int = 0  # iterations skipped for a non-finite loss or gradient
    eval_history: list[dict[str, float]] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)  # resume=force, see identity.py

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.regime.global_batch * self.cfg.regime.seq_len

    def state_dict(self) -> dict[str, Any]:
        """The loop's state: step, LR schedule, clock, target tracker, eval history, bad-step
        count, RNG and the loader position (when every rank's is the same)."""
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "loader": None if self.loader.per_rank_state else self.loader.state_dict(),
            "clock": self.clock.state_dict(),
            "tracker": self.tracker.state_dict(),
            "eval_history": self.eval_history,
            "bad_steps": self.bad_steps,
            "rng": rng_state(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(s["scheduler"])
        if s["loader"] is not None:
            self.loader.load_state_dict(s["loader"])
        self.clock.load_state_dict(s["clock"])
        self.tracker.load_state_dict(s["tracker"])
        self.eval_history = list(s["eval_history"])
        self.bad_steps = s["bad_steps"]
        self.step = s["step"]
        set_rng_state(s["rng"])


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's generators, and the CUDA generator of this rank's own
    device (not every visible device's: a resume may see fewer GPUs, and each rank draws on
    its device alone)."""
    s = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda_device"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. Checkpoints written before the per-device format hold
    ``cuda``, one state per device visible then: this rank's device takes its own entry when
    there is one, and a resume with fewer visible GPUs no longer raises."""
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if not torch.cuda.is_available():
        return
    dev = torch.cuda.current_device()
    if "cuda_device" in s:
        torch.cuda.set_rng_state(s["cuda_device"], dev)
    elif "cuda" in s and dev < len(s["cuda"]):
        torch.cuda.set_rng_state(s["cuda"][dev], dev)
