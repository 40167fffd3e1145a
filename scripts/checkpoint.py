"""Atomic checkpoints: write to a temporary file in the same directory, fsync, then rename,
so a kill at any moment leaves either the previous or the new checkpoint, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

NAME = "checkpoint.pt"


def save_checkpoint(run_dir: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(run_dir) / NAME
    tmp = path.with_name(f".{NAME}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The latest good checkpoint, or ``None``. A corrupt file raises a clear error."""
    path = Path(run_dir) / NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(
            f"checkpoint {path} is unreadable ({type(e).__name__}): move it away and rerun, or use resume=never with a new run_dir"
        ) from None
