"""The loop the benchmark trusts: train, evaluate, checkpoint, stop on signals, record."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from scripts.record import EvalPoint, RunRecord, variant_name
from scripts.trainer import identity, plan, state
from scripts.trainer.checks import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    ConfigError,
    validate,
)
from scripts.trainer.logs import Logs, MetricsFile, Progress, Wandb
from scripts.trainer.runinfo import run_info
from scripts.trainer.setup import Run, setup
from scripts.trainer.step import evaluate, train_step
from soap import NonFiniteGradientError, optimizer_state_bytes


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


def reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak-memory measurement (per run, even when several runs share a
    process, as in the demo). On CPU, Linux's resident-set high-water mark is reset through
    /proc/self/clear_refs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes: CUDA allocator peak on GPU; peak resident set size (VmHWM) on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def record(run: Run, status: str, message: str | None) -> RunRecord:
    c, cfg = run.clock, run.cfg
    per_step = (lambda x: x / c.steps_timed) if c.steps_timed else (lambda x: None)
    state_bytes = torch.tensor(
        [optimizer_state_bytes(run.optimizer)], device=run.accelerator.device
    )
    gathered = run.accelerator.gather(state_bytes)
    reached = run.tracker.reached
    return RunRecord(
        status=status,
        message=message,
        optimizer=variant_name(cfg.optimizer_name, cfg.optimizer),
        lr=float(cfg.optimizer.lr),
        model=cfg.model.preset,
        regime=cfg.regime.name,
        seed=int(cfg.seed),
        fraction=float(cfg.train.fraction),
        precondition_frequency=int(cfg.regime.precondition_frequency),
        steps=run.step,
        planned_steps=run.steps,
        full_length_steps=run.full_steps,
        tokens=run.step * run.tokens_per_step,
        tokens_per_step=run.tokens_per_step,
        final_eval_loss=run.eval_history[-1]["eval_loss"] if run.eval_history else None,
        target_loss=run.tracker.target,
        target_reached=reached is not None,
        steps_to_target=reached["step"] if reached else None,
        seconds_to_target=reached["seconds"] if reached else None,
        train_seconds=c.train_seconds,
        warmup_seconds=c.warmup_seconds,
        seconds_per_step=per_step(c.train_seconds),
        fwd_bwd_seconds_per_step=per_step(c.parts["fwd_bwd"]),
        optim_seconds_per_step=per_step(c.parts["optim"]),
        data_seconds_per_step=per_step(c.parts["data"]),
        tokens_per_second=run.tokens_per_step * c.steps_timed / c.train_seconds
        if c.train_seconds
        else None,
        world_size=run.accelerator.num_processes,
        grad_accum=run.accum,
        optimizer_state_bytes=int(gathered.max()),
        optimizer_state_bytes_total=int(gathered.sum()),
        peak_memory_bytes=peak_memory(run.accelerator.device),
        params_total=run.params["total"],
        params_non_embedding=run.params["non_embedding"],
        vocab_size=run.raw_model.get_output_embeddings().weight.shape[0],
        eval_history=[EvalPoint(**e) for e in run.eval_history],
        config_changes=list(run.config_changes),
    )


def _prepare_run_dir(cfg: Any) -> tuple[Path, Path | None, list[str]]:
    """Before anything expensive: the run directory is writable, and what it holds (if
    anything) is this configuration's run. Returns it, its latest checkpoint and the
    configuration keys that differ (``resume=force`` only)."""
    from omegaconf import OmegaConf

    run_dir = Path(cfg.run_dir)
    created = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
    try:  # a probe file, and the directories made for it removed again: nothing written yet
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"run_dir={run_dir} is not writable ({e.strerror}): choose another run_dir="
        ) from None
    finally:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
    ck = state.latest(run_dir)
    if cfg.resume == "never" and (ck is not None or (run_dir / "summary.json").exists()):
        raise ConfigError(
            f"{run_dir} already holds a run: pass resume=auto to continue it or a new run_dir="
        )
    changes = identity.check(run_dir, OmegaConf.to_container(cfg, resolve=True), cfg.resume)
    return run_dir, ck, changes


def _write_run_files(run: Run, changes: list[str]) -> None:
    from omegaconf import OmegaConf

    run.run_dir.mkdir(parents=True, exist_ok=True)
    config = run.run_dir / identity.CONFIG
    if changes and config.exists():  # resume=force: keep what the first part trained with
        os.replace(config, run.run_dir / f"config.before-step-{run.step}.yaml")
    config.write_text(OmegaConf.to_yaml(run.cfg, resolve=True))
    info = run_info() | {
        "world_size": run.accelerator.num_processes,
        "device": str(run.accelerator.device),
        "data_parallel": _data_parallel(run.model),
        "data": run.data_info,
    }
    (run.run_dir / "env.json").write_text(json.dumps(info, indent=2, default=str))


def _data_parallel(model: Any) -> str:
    """What the parameters are, read from them: ``ddp`` (plain), ``fsdp 1xS`` or ``hsdp RxS``
    (``DTensor`` on a ``replicate x shard`` mesh)."""
    p = next(model.parameters())
    if type(p).__name__ != "DTensor":
        return "ddp"
    shape = tuple(p.device_mesh.shape)
    r, s = (1, *shape) if len(shape) == 1 else shape
    return f"{'hsdp' if r > 1 else 'fsdp'} {r}x{s}"


def _sinks(run: Run, resume_step: int | None) -> Logs:
    if not run.is_main:
        return Logs([], run.cfg.train.log_every)
    cfg = run.cfg
    sinks: list[Any] = [MetricsFile(run.run_dir / "metrics.jsonl", resume_step)]
    if cfg.wandb.mode != "disabled":
        from omegaconf import OmegaConf

        sinks.append(Wandb(cfg, run.run_dir, OmegaConf.to_container(cfg, resolve=True)))
    if cfg.train.progress:
        desc = f"{cfg.optimizer_name} lr={cfg.optimizer.lr:g}"
        sinks.append(Progress(desc, run.steps, run.step, run.tokens_per_step))
    return Logs(sinks, cfg.train.log_every)


def run_training(cfg: Any) -> int:
    """Train one run to its end (or a signal, divergence, or the target); returns the exit
    code. A completed run directory is left alone."""
    code, acc = _train(cfg)
    _finish(acc)
    return code


def _train(cfg: Any) -> tuple[int, Any]:
    validate(cfg)
    run_dir, ck, changes = _prepare_run_dir(cfg)
    prev = RunRecord.read(run_dir)
    if ck is not None and prev is not None and prev.completed:
        print(
            f"{run_dir}: already completed ({prev.steps} steps, final eval loss "
            f"{prev.final_eval_loss:.4f}); nothing to do"
        )
        return 0, None
    run = setup(cfg)
    acc = run.accelerator
    reset_peak_memory(acc.device)
    if ck is not None:
        ck = state.restore_latest(run)
        if run.is_main:
            print(f"resumed {run_dir} at step {run.step} ({ck.name})")
            if changes:
                print(f"warning: resume=force with a changed configuration: {'; '.join(changes)}")
    if run.is_main:
        _write_run_files(run, changes)
    run.config_changes = (prev.config_changes if prev is not None else []) + changes
    acc.wait_for_everyone()
    logs = _sinks(run, run.step if ck is not None else None)
    if run.is_main:
        print("\n".join(plan.plan_line(run)), flush=True)
    status, message, code = "completed", None, 0
    saved_at = run.step
    with Signals() as signals:
        try:
            while run.step < run.steps:
                run.clock.start_step()
                batches = run.loader.next()
                run.clock.mark("data")
                try:
                    out = train_step(run, batches)
                except NonFiniteGradientError:  # an optimizer configured to raise
                    run.optimizer.zero_grad(set_to_none=True)
                    out = {"loss": float("nan"), "skipped": 1.0}
                run.step += 1
                timing = run.clock.end_step(run.step)
                if run.is_main:
                    for line in plan.estimate_line(run):
                        print(line, flush=True)
                rec: dict[str, Any] = {
                    "step": run.step,
                    "tokens": run.step * run.tokens_per_step,
                    "lr": run.scheduler.get_last_lr()[0],
                    **out,
                    "train_seconds": run.clock.train_seconds,
                    **timing,
                }
                if out.get("skipped"):
                    # A skipped iteration consumed its batch but took no optimizer step.
                    run.bad_steps += 1
                    rec["skipped"] = True
                    if run.bad_steps > cfg.train.max_bad_steps:
                        status, code = "diverged", EXIT_DIVERGED
                        run.step -= 1  # that iteration was not taken
                        kept = (
                            f"the last good checkpoint (step {saved_at}) in {run_dir} is kept"
                            if state.latest(run_dir) is not None
                            else "no checkpoint had been written yet"
                        )
                        message = (
                            f"non-finite loss or gradient in iteration {run.step + 1} (after "
                            f"{run.step} steps); stopped, {kept}. Lower optimizer.lr or raise "
                            "train.max_bad_steps"
                        )
                        break
                if run.step % cfg.train.eval_every == 0 or run.step == run.steps:
                    ev = evaluate(run)
                    rec["eval_loss"] = ev
                    run.eval_history.append(
                        {
                            "step": run.step,
                            "eval_loss": ev,
                            "train_seconds": run.clock.train_seconds,
                        }
                    )
                    run.tracker.update(run.step, run.clock.train_seconds, ev)
                logs.log(rec, last=run.step == run.steps)
                if run.tracker.reached is not None and cfg.train.stop_at_target:
                    state.save(run)
                    saved_at = run.step
                    message = (
                        f"target {cfg.train.target_loss} reached at step "
                        f"{run.tracker.reached['step']:.1f}; stopped (train.stop_at_target)"
                    )
                    break
                if signals.received is not None:
                    state.save(run)
                    status, code = "interrupted", EXIT_INTERRUPTED
                    message = (
                        f"stopped by signal {signals.received} at step {run.step}; checkpoint "
                        f"saved in {run_dir}. Resume with the same command (resume=auto)"
                    )
                    break
                if run.step % cfg.train.checkpoint_every == 0 or run.step == run.steps:
                    state.save(run)
                    saved_at = run.step
        except BaseException:
            logs.close(None)
            raise
    summary = record(run, status, message)  # every rank takes part (state bytes per rank)
    logs.close(summary.to_dict())
    if run.is_main:
        summary.write(run_dir)
        if message:
            print(message, file=sys.stderr if code else sys.stdout)
        fl = summary.final_eval_loss
        print(
            f"{status}: {run_dir} | steps {run.step}/{run.steps} | final eval loss "
            f"{fl if fl is None else round(fl, 4)} | train {run.clock.train_seconds:.1f}s"
        )
    return code, acc


def _finish(acc: Any) -> None:
    """Leave together. The run's objects (FSDP state, device meshes, loaders) are freed when
    ``_train`` returns, while every rank is still there; then a barrier; only then does
    Accelerate destroy the process group. Destroying it on one rank while another still
    frees its run left that one blocked in a destructor (gloo, about one run in seven)."""
    import gc

    if acc is None:
        return
    gc.collect()
    acc.wait_for_everyone()
    acc.end_training()
