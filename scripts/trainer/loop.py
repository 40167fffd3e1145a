"""The loop the benchmark trusts: train, evaluate, checkpoint, stop on signals, record.

:func:`run_training` reads top to bottom: check the run directory, build the run
(:mod:`~scripts.trainer.setup`), resume it, then iterate - one iteration
(:func:`_iteration`), then the after-step work in order: the divergence rule, evaluation,
logging, the target rule, a received signal, the checkpoint - and end with the run record."""

from __future__ import annotations

import gc
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from omegaconf import DictConfig

from scripts.record import RunRecord
from scripts.trainer import plan, state
from scripts.trainer.checks import EXIT_DIVERGED, EXIT_INTERRUPTED, validate
from scripts.trainer.logs import Logs, open_logs
from scripts.trainer.memory import reset_peak_memory
from scripts.trainer.optimizers import eval_weights, training_weights
from scripts.trainer.run import Run
from scripts.trainer.rundir import prepare_run_dir, write_run_files
from scripts.trainer.setup import setup
from scripts.trainer.step import evaluate, train_step
from scripts.trainer.summary import summarize
from soap import NonFiniteGradientError


class Signals:
    """SIGTERM/SIGINT set a flag the loop checks after each step (so a checkpoint is written);
    the previous handlers come back on exit, so code that runs several trainings in one
    process (the demo) or anything after them (the report) sees Ctrl-C again."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum


@dataclass
class Outcome:
    """How the loop ended: the record's status, a message to print, the exit code."""

    status: str = "completed"
    message: str | None = None
    code: int = 0


def run_training(cfg: DictConfig) -> int:
    """Train one run to its end (or a signal, divergence, or the target); returns the exit
    code. A completed run directory is left alone."""
    code, acc = _train(cfg)
    _finish(acc)
    return code


def _train(cfg: DictConfig) -> tuple[int, Accelerator | None]:
    validate(cfg)
    run_dir, ck, changes = prepare_run_dir(cfg)
    prev = RunRecord.read(run_dir)
    if ck is not None and prev is not None and prev.completed:
        print(
            f"{run_dir}: already completed ({prev.steps} steps, final eval loss "
            f"{prev.final_eval_loss:.4f}); nothing to do"
        )
        return 0, None
    run = setup(cfg)
    _start(run, ck, prev, changes)
    logs = open_logs(run, run.step if ck is not None else None)
    if run.is_main:
        print("\n".join(plan.plan_line(run)), flush=True)
    with Signals() as signals:
        try:
            end = _loop(run, logs, signals)
        except BaseException:
            logs.close(None)
            raise
    _end(run, logs, end)
    return end.code, run.accelerator


def _start(run: Run, ck: Path | None, prev: RunRecord | None, changes: list[str]) -> None:
    """Before the first iteration: the memory measurement, the checkpoint (if any), the run
    files, and every rank waiting for them."""
    reset_peak_memory(run.accelerator.device)
    if ck is not None:
        ck = state.restore_latest(run)
        training_weights(run.optimizer)
        if run.is_main:
            print(f"resumed {run.run_dir} at step {run.step} ({ck.name})")
            if changes:
                print(f"warning: resume=force with a changed configuration: {'; '.join(changes)}")
    if run.is_main:
        write_run_files(run, changes)
    run.config_changes = (prev.config_changes if prev is not None else []) + changes
    run.accelerator.wait_for_everyone()


def _loop(run: Run, logs: Logs, signals: Signals) -> Outcome:
    train = run.cfg.train
    saved_at = run.step
    while run.step < run.steps:
        rec = _iteration(run)
        if rec.get("skipped"):
            # A skipped iteration consumed its batch but took no optimizer step.
            run.bad_steps += 1
            rec["skipped"] = True
            if run.bad_steps > train.max_bad_steps:
                return _diverged(run, saved_at)
        if run.step % train.eval_every == 0 or run.step == run.steps:
            rec["eval_loss"] = _evaluate(run)
        logs.log(rec, last=run.step == run.steps)
        if run.tracker.reached is not None and train.stop_at_target:
            state.save(run)
            return Outcome(
                message=f"target {train.target_loss} reached at step "
                f"{run.tracker.reached['step']:.1f}; stopped (train.stop_at_target)"
            )
        if signals.received is not None:
            state.save(run)
            return Outcome(
                "interrupted",
                f"stopped by signal {signals.received} at step {run.step}; checkpoint saved in "
                f"{run.run_dir}. Resume with the same command (resume=auto)",
                EXIT_INTERRUPTED,
            )
        if run.step % train.checkpoint_every == 0 or run.step == run.steps:
            state.save(run)
            saved_at = run.step
    return Outcome()


def _iteration(run: Run) -> dict[str, Any]:
    """One optimizer step (timed); its metrics. An optimizer configured to raise on a
    non-finite gradient has its step counted as skipped, like the trainer's own check."""
    run.clock.start_step()
    batches = run.loader.next()
    run.clock.mark("data")
    try:
        out = train_step(run, batches)
    except NonFiniteGradientError:
        run.optimizer.zero_grad(set_to_none=True)
        out = {"loss": float("nan"), "skipped": 1.0}
    run.step += 1
    timing = run.clock.end_step(run.step)
    if run.is_main:
        for line in plan.estimate_line(run):
            print(line, flush=True)
    return {
        "step": run.step,
        "tokens": run.step * run.tokens_per_step,
        "lr": run.scheduler.get_last_lr()[0],
        **out,
        "train_seconds": run.clock.train_seconds,
        **timing,
    }


def _evaluate(run: Run) -> float:
    with eval_weights(run.optimizer):
        ev = evaluate(run)
    seconds = run.clock.train_seconds
    run.eval_history.append({"step": run.step, "eval_loss": ev, "train_seconds": seconds})
    run.tracker.update(run.step, seconds, ev)
    return ev


def _diverged(run: Run, saved_at: int) -> Outcome:
    """More skipped iterations than ``train.max_bad_steps``: stop, keep the last checkpoint."""
    run.step -= 1  # that iteration was not taken
    kept = (
        f"the last good checkpoint (step {saved_at}) in {run.run_dir} is kept"
        if state.latest(run.run_dir) is not None
        else "no checkpoint had been written yet"
    )
    return Outcome(
        "diverged",
        f"non-finite loss or gradient in iteration {run.step + 1} (after {run.step} steps); "
        f"stopped, {kept}. Lower optimizer.lr or raise train.max_bad_steps",
        EXIT_DIVERGED,
    )


def _end(run: Run, logs: Logs, end: Outcome) -> None:
    summary = summarize(run, end.status, end.message)  # every rank takes part
    logs.close(summary.to_dict())
    if not run.is_main:
        return
    summary.write(run.run_dir)
    if end.message:
        print(end.message, file=sys.stderr if end.code else sys.stdout)
    fl = summary.final_eval_loss
    print(
        f"{end.status}: {run.run_dir} | steps {run.step}/{run.steps} | final eval loss "
        f"{fl if fl is None else round(fl, 4)} | train {run.clock.train_seconds:.1f}s"
    )


def _finish(acc: Accelerator | None) -> None:
    """Leave together. The run's objects (FSDP state, device meshes, loaders) are freed when
    ``_train`` returns, while every rank is still there; then a barrier; only then does
    Accelerate destroy the process group. Destroying it on one rank while another still
    frees its run left that one blocked in a destructor (gloo, about one run in seven)."""
    if acc is None:
        return
    gc.collect()
    acc.wait_for_everyone()
    acc.end_training()
