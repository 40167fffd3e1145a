"""The benchmark's clock and target tracker (terms defined once, used everywhere).

* iteration: one optimizer step (micro-batches are not iterations);
* wall-clock: training time only. The device is synchronised before every clock read;
  evaluation and checkpointing happen outside the timed region, and the first
  ``skip_steps`` steps (compilation, allocator warm-up) are timed separately as warm-up;
* target: an eval loss. It is "reached" at the first evaluation with loss <= target; the
  reported step and time are linearly interpolated between that evaluation and the previous
  one (the loss is assumed linear in between): :func:`scripts.measures.crossing`, the one
  definition the trainer and the report share.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from scripts.measures import crossing_point


def synchronize(device: torch.device | str | None = None) -> None:
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)
    elif dev is not None and dev.type == "mps":  # pragma: no cover
        torch.mps.synchronize()


class TrainClock:
    """Accumulates training seconds per step, split into data / forward+backward / optimizer."""

    def __init__(self, device: torch.device | str, skip_steps: int = 2) -> None:
        self.device = device
        self.skip_steps = int(skip_steps)
        self.train_seconds = 0.0
        self.warmup_seconds = 0.0
        self.parts = {"data": 0.0, "fwd_bwd": 0.0, "optim": 0.0}
        self.steps_timed = 0
        self._t: float | None = None
        self._last: dict[str, float] = {}

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def start_step(self) -> None:
        self._t = self.now()
        self._last = {}

    def mark(self, part: str) -> None:
        """Close the current part (``data``, ``fwd_bwd`` or ``optim``) of the step."""
        t = self.now()
        self._last[part] = t - self._t
        self._t = t

    def end_step(self, step: int) -> dict[str, float]:
        total = sum(self._last.values())
        if step <= self.skip_steps:
            self.warmup_seconds += total
        else:
            self.train_seconds += total
            self.steps_timed += 1
            for k, v in self._last.items():
                self.parts[k] += v
        return {f"time_{k}": v for k, v in self._last.items()} | {"time_step": total}

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds,
            "warmup_seconds": self.warmup_seconds,
            "parts": dict(self.parts),
            "steps_timed": self.steps_timed,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.train_seconds = s["train_seconds"]
        self.warmup_seconds = s["warmup_seconds"]
        self.parts = dict(s["parts"])
        self.steps_timed = s["steps_timed"]


class TargetTracker:
    """First (interpolated) step and training time at which eval loss <= target, updated one
    evaluation at a time with the same rule as :func:`scripts.measures.crossing`."""

    def __init__(self, target: float | None) -> None:
        self.target = target
        self.prev: tuple[float, float, float] | None = None
        self.reached: dict[str, float] | None = None

    def update(self, step: int, seconds: float, loss: float) -> bool:
        if self.target is None or self.reached is not None:
            return self.reached is not None
        hit = crossing_point(self.prev, step, seconds, loss, self.target)
        if hit is not None:
            self.reached = {"step": hit[0], "seconds": hit[1], "eval_step": step}
            return True
        if math.isfinite(loss):
            self.prev = (float(step), float(seconds), float(loss))
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target, "prev": self.prev, "reached": self.reached}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.prev = tuple(s["prev"]) if s["prev"] is not None else None
        self.reached = s["reached"]
