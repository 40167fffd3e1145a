"""One run record: what the trainer writes to ``summary.json``, the report reads and the tests
check. Terms (iteration, wall-clock, target) as in :mod:`scripts.clock`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
STATUSES = ("completed", "interrupted", "diverged", "crashed")


@dataclass
class EvalPoint:
    step: int
    eval_loss: float
    train_seconds: float


@dataclass
class RunRecord:
    status: str  # completed | interrupted | diverged | crashed (no summary was written)
    optimizer: str  # name, with the SOAP variant: soap, soap-one-sided, soap-factorized, ...
    lr: float
    model: str
    regime: str
    seed: int = 0
    fraction: float = 1.0
    precondition_frequency: int | None = None
    preset: str | None = None  # the protocol preset and phase that produced the run
    phase: str | None = None  # (scripts/experiments/protocol.py); None: started by hand
    message: str | None = None
    steps: int = 0  # iterations taken
    planned_steps: int = 0
    full_length_steps: int = 0
    tokens: int = 0
    tokens_per_step: int = 0
    final_eval_loss: float | None = None
    target_loss: float | None = None
    target_reached: bool = False
    steps_to_target: float | None = None  # interpolated iteration
    seconds_to_target: float | None = None  # interpolated training seconds
    train_seconds: float = 0.0  # wall-clock: training only, device synchronised
    warmup_seconds: float = 0.0  # the first train.clock_skip_steps steps (compile, warm-up)
    seconds_per_step: float | None = None
    fwd_bwd_seconds_per_step: float | None = None
    optim_seconds_per_step: float | None = None
    data_seconds_per_step: float | None = None
    tokens_per_second: float | None = None
    world_size: int = 1
    grad_accum: int = 1
    optimizer_state_bytes: int | None = None  # per rank (the largest rank's)
    optimizer_state_bytes_total: int | None = None  # summed over ranks
    peak_memory_bytes: int | None = None  # per rank (rank 0)
    params_total: int | None = None
    params_non_embedding: int | None = None
    vocab_size: int | None = None
    train_data_tokens: int | None = None  # the training split's tokens (passes = tokens / it)
    eval_history: list[EvalPoint] = field(default_factory=list)
    # resume=force: the configuration keys that changed when the run was continued
    config_changes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, run_dir: str | Path) -> Path:
        """Atomically (temp file + rename): a kill never leaves half a summary."""
        path = Path(run_dir) / SUMMARY
        tmp = path.with_name(f".{SUMMARY}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["eval_history"] = [
            e if isinstance(e, EvalPoint) else EvalPoint(**e) for e in d.get("eval_history", [])
        ]
        return cls(**kw)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord | None:
        path = Path(run_dir) / SUMMARY
        if not path.exists():
            return None
        return cls.from_dict(json.loads(path.read_text()))


def variant_name(optimizer_name: str, optimizer_cfg: dict[str, Any] | Any) -> str:
    """The optimizer's label in reports: SOAP variants are named for what they switch on."""
    name = optimizer_name
    if name == "soap":
        if optimizer_cfg.get("one_sided"):
            name += "-one-sided"
        if optimizer_cfg.get("factorized"):
            name += "-factorized"
    return name
