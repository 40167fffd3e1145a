"""Where a run's metrics go, behind one interface: ``metrics.jsonl``, wandb, and progress on
the terminal (a bar on a TTY; plain lines when stdout is a file, Slurm, CI or ``nohup``)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from scripts.trainer.run import Run


class Sink(Protocol):
    def log(self, rec: dict[str, Any]) -> None: ...

    def close(self, summary: dict[str, Any] | None) -> None: ...


class MetricsFile:
    """One JSON line per logged iteration (every ``log_every`` steps, every evaluation)."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:
            _truncate(path, resume_step)
        self._f = open(path, "a")  # noqa: SIM115 - closed in close()

    def log(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self, summary: dict[str, Any] | None) -> None:
        self._f.close()


def _truncate(path: Path, step: int) -> None:
    """Drop lines written after the checkpoint we resume from (a kill leaves some)."""
    if not path.exists():
        return
    keep = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


class Wandb:
    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        # A stable id (not hash(), which changes per process) continues the same wandb run.
        run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self._run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            mode=cfg.wandb.mode,
            dir=str(run_dir),
            name=f"{cfg.experiment_name}/{cfg.optimizer_name}/{run_dir.name}",
            config=config,
            resume="allow",
            id=run_id,
        )

    def log(self, rec: dict[str, Any]) -> None:
        self._run.log(rec, step=rec["step"])

    def close(self, summary: dict[str, Any] | None) -> None:
        if summary:
            self._run.summary.update({k: v for k, v in summary.items() if not isinstance(v, list)})
        self._run.finish()


class Progress:
    """A tqdm bar on a terminal; off a terminal a plain line at most every ``seconds`` (and at
    every evaluation and the last step), so log files stay readable."""

    def __init__(
        self, desc: str, total: int, initial: int, tokens_per_step: int, seconds: float = 10.0
    ) -> None:
        self.desc, self.total, self.tokens_per_step = desc, total, tokens_per_step
        self.tty = sys.stdout.isatty()
        self.seconds = seconds
        self._last = -float("inf")  # the first step always prints
        self._bar = None
        if self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True)

    def log(self, rec: dict[str, Any]) -> None:
        tok_s = self.tokens_per_step / max(rec.get("time_step", 0.0), 1e-9)
        if self._bar is not None:
            self._bar.update(rec["step"] - self._bar.n)
            self._bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tok_s:.0f}")
            return
        now = time.monotonic()
        if "eval_loss" in rec or rec["step"] == self.total or now - self._last >= self.seconds:
            self._last = now
            ev = f" eval {rec['eval_loss']:.4f}" if "eval_loss" in rec else ""
            print(
                f"{self.desc}: step {rec['step']}/{self.total} loss {rec['loss']:.4f}{ev} "
                f"lr {rec['lr']:.3g} {tok_s:,.0f} tok/s",
                flush=True,
            )

    def close(self, summary: dict[str, Any] | None) -> None:
        if self._bar is not None:
            self._bar.close()


class Logs:
    """Fans each record out to the sinks of this rank (only rank 0 has any)."""

    def __init__(self, sinks: list[Sink], log_every: int) -> None:
        self.sinks, self.log_every = sinks, log_every

    def log(self, rec: dict[str, Any], last: bool) -> None:
        if rec["step"] % self.log_every == 0 or "eval_loss" in rec or last or rec.get("skipped"):
            for s in self.sinks:
                s.log(rec)

    def close(self, summary: dict[str, Any] | None) -> None:
        for s in self.sinks:
            s.close(summary)


def open_logs(run: Run, resume_step: int | None) -> Logs:
    """The run's sinks: ``metrics.jsonl`` (truncated to ``resume_step`` on resume), wandb
    unless disabled, the progress bar; on rank 0 only."""
    if not run.is_main:
        return Logs([], run.cfg.train.log_every)
    cfg = run.cfg
    sinks: list[Sink] = [MetricsFile(run.run_dir / "metrics.jsonl", resume_step)]
    if cfg.wandb.mode != "disabled":
        sinks.append(Wandb(cfg, run.run_dir, OmegaConf.to_container(cfg, resolve=True)))
    if cfg.train.progress:
        desc = f"{cfg.optimizer_name} lr={cfg.optimizer.lr:g}"
        sinks.append(Progress(desc, run.steps, run.step, run.tokens_per_step))
    return Logs(sinks, cfg.train.log_every)
