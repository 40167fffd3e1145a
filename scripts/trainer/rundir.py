"""The run directory: checked before anything expensive (writable; holds this configuration's
run, if any), and the files written when the run starts (``config.yaml``, ``env.json``)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scripts.trainer import identity, state
from scripts.trainer.checks import ConfigError
from scripts.trainer.run import Run
from scripts.trainer.runinfo import run_info


def _probe(run_dir: Path, attempts: int = 5) -> None:
    """Write and remove a probe file in ``run_dir``, then remove the directories made for it:
    nothing is left behind by a run refused later. The ranks of one run probe at once, so one
    rank may remove a directory another has just made: that one retries (seen with torchrun
    on 2 CPU processes: "No such file or directory")."""
    for attempt in range(attempts):
        created = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / f".write-test.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
        finally:
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()


def prepare_run_dir(cfg: DictConfig) -> tuple[Path, Path | None, list[str]]:
    """Before anything expensive: the run directory is writable, and what it holds (if
    anything) is this configuration's run. Returns it, its latest checkpoint and the
    configuration keys that differ (``resume=force`` only)."""
    run_dir = Path(cfg.run_dir)
    try:
        _probe(run_dir)
    except OSError as e:
        raise ConfigError(
            f"run_dir={run_dir} is not writable ({e.strerror}): choose another run_dir="
        ) from None
    ck = state.latest(run_dir)
    if cfg.resume == "never" and (ck is not None or (run_dir / "summary.json").exists()):
        raise ConfigError(
            f"{run_dir} already holds a run: pass resume=auto to continue it or a new run_dir="
        )
    changes = identity.check(run_dir, OmegaConf.to_container(cfg, resolve=True), cfg.resume)
    return run_dir, ck, changes


def write_run_files(run: Run, changes: list[str]) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    config = run.run_dir / identity.CONFIG
    if changes and config.exists():  # resume=force: keep what the first part trained with
        os.replace(config, run.run_dir / f"config.before-step-{run.step}.yaml")
    config.write_text(OmegaConf.to_yaml(run.cfg, resolve=True))
    info = run_info() | {
        "world_size": run.accelerator.num_processes,
        "device": str(run.accelerator.device),
        "data_parallel": data_parallel(run.model),
        "data": run.data_info,
    }
    (run.run_dir / "env.json").write_text(json.dumps(info, indent=2, default=str))


def data_parallel(model: Any) -> str:
    """What the parameters are, read from them: ``ddp`` (plain), ``fsdp 1xS`` or ``hsdp RxS``
    (``DTensor`` on a ``replicate x shard`` mesh)."""
    p = next(model.parameters())
    if type(p).__name__ != "DTensor":
        return "ddp"
    shape = tuple(p.device_mesh.shape)
    r, s = (1, *shape) if len(shape) == 1 else shape
    return f"{'hsdp' if r > 1 else 'fsdp'} {r}x{s}"
