"""Run identity: which configuration a run directory holds, so that a run is resumed or
skipped only by the configuration that started it.

The identity is the resolved configuration minus the keys that cannot change the result
(where things are written, logging, progress, checkpoint cadence, timeouts, workers).
A different identity in an existing run directory is refused in one line naming the keys,
unless ``resume=force``, which continues and records the keys in the run record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scripts.trainer.checks import ConfigError

CONFIG = "config.yaml"
# Keys (or key prefixes) that do not change what is trained or measured: where and how it
# runs (micro-batches keep the global batch; FSDP, compilation and the eval batch change
# round-off only), not what.
NOT_IDENTITY = (
    "regime.micro_batch",
    "train.fsdp",
    "train.dp_replicate",
    "train.dp_shard",
    "train.compile",
    "train.eval_batch_size",
    "run_dir",
    "resume",
    "cache_dir",
    "experiment_name",
    "protocol",  # provenance: which preset and phase started the run
    "wandb",
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.dist_timeout_s",
    "data.num_proc",
)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out |= _flat(v, f"{prefix}{k}.")
    else:
        out[prefix[:-1]] = d
    return out


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flattened configuration that decides the result."""
    return {
        k: v
        for k, v in _flat(cfg).items()
        if not any(k == x or k.startswith(x + ".") for x in NOT_IDENTITY)
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every identity key that differs (missing keys included)."""
    a, b = identity(old), identity(new)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def recorded(run_dir: Path) -> dict[str, Any] | None:
    """The configuration a run directory records, or None."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        return None
    return yaml.safe_load(path.read_text()) or {}


def check(run_dir: Path, cfg: dict[str, Any], resume: str) -> list[str]:
    """The differing keys (empty when the run directory is new or holds this configuration);
    raises ``ConfigError`` when they differ and ``resume`` is not ``force``."""
    old = recorded(run_dir)
    if old is None:
        return []
    diff = differences(old, cfg)
    if diff and resume != "force":
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(
            f"{run_dir} holds a run with another configuration ({shown}): use another "
            "run_dir=, or resume=force to continue it anyway (recorded in its summary.json)"
        )
    return diff
