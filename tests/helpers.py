"""Shared helpers: compose a training config like the CLI does, and run it in-process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

# Small and fast: seq_len 64, 8 sequences per step.
FAST = [
    "model=tiny",
    "regime=cpu",
    "regime.seq_len=64",
    "regime.global_batch=8",
    "regime.micro_batch=8",
    "train.eval_sequences=16",
    "train.eval_batch_size=16",
    "train.progress=false",
    "train.clock_skip_steps=1",
]


def compose(overrides: list[str], cache_dir: Path):
    from scripts.config import compose as compose_config

    return compose_config([*FAST, f"cache_dir={cache_dir}", *overrides])


def run_inprocess(overrides: list[str], cache_dir: Path) -> int:
    from scripts.trainer import run_training

    return run_training(compose(overrides, cache_dir))


def port(base: int) -> int:
    """A fixed torchrun port of a test, moved per pytest-xdist worker (gw0, gw1, ...) so
    that tests running at once in two workers never share one (the tests' ports are
    29531-29651; each worker gets its own block of 200)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return base + 200 * int(worker.removeprefix("gw") or 0)


def _env(extra: dict | None = None) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(REPO),
        # One thread per process unless the suite is run with another count (conftest.py).
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        **(extra or {}),
    }


def _cmd(args: list[str], cache_dir: Path, launcher: list[str] | None) -> list[str]:
    return (launcher or [sys.executable, "-m"]) + [
        "scripts.train",
        *FAST,
        f"cache_dir={cache_dir}",
        *args,
    ]


def prepared(args: list[str], cache_dir: Path) -> None:
    """The data (or, streamed, the tokenizer) of these training arguments prepared in this
    process, so that two runs started at once do not both prepare it."""
    from scripts.prepare import main

    assert main([*FAST, f"cache_dir={cache_dir}", *args]) == 0


def cli(
    args: list[str],
    cache_dir: Path,
    env: dict | None = None,
    timeout: int = 300,
    launcher: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the training CLI to completion."""
    return subprocess.run(
        _cmd(args, cache_dir, launcher),
        cwd=REPO,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn(args: list[str], cache_dir: Path, launcher: list[str] | None = None) -> subprocess.Popen:
    """Start the training CLI in its own process group (so a test can kill all of it)."""
    return subprocess.Popen(
        _cmd(args, cache_dir, launcher),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def metrics(run_dir: Path) -> list[dict]:
    return [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def checkpoint(run_dir: Path) -> dict:
    """The latest checkpoint of a run as one plain dict (DCP's own converter), with the
    trainer state unpickled: ``{"model": {...}, "optimizer": {...}, "trainer": {...}}``."""
    import io
    import pickle
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from scripts.trainer.state import latest

    path = latest(Path(run_dir))
    assert path is not None, f"no checkpoint in {run_dir}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ck.pt"
        dcp_to_torch_save(str(path), str(out))
        ck = torch.load(out, weights_only=False)
    for k, v in list(ck.items()):
        if isinstance(v, io.BytesIO):
            ck[k] = pickle.loads(v.getvalue())
    return ck


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun's workers are not in its process
    group, so killing the group would leave them running)."""
    import signal

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
