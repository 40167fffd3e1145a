"""The training loop the benchmark trusts.

``python -m scripts.train model=tiny optimizer=soap regime=cpu train.max_steps=200``
``accelerate launch -m scripts.train model=360m regime=large_batch optimizer=soap data=c4``

setup() builds everything from the resolved config; train_step() runs one iteration (one
optimizer step over grad_accum micro-batches); evaluate() computes the loss on the fixed
validation set; main() is the loop with evaluation, checkpoints, signals and logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.loader import PackedSequences, TrainLoader, validation_batches
from data.prepare import Prepared, prepare
from data.sources import DataError
from scripts.checkpoint import load_checkpoint, save_checkpoint
from scripts.clock import TargetTracker, TrainClock
from scripts.runinfo import run_info
from soap import NonFiniteGradientError


class ConfigError(ValueError):
    """A bad configuration value, with a one-line message naming the fix."""


EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130
# Optimizers whose update needs each matrix whole (eigenbases, Newton-Schulz): not with FSDP.
WHOLE_MATRIX_OPTIMIZERS = ("soap", "shampoo", "muon")
DECODER_LAYERS = ["Olmo2DecoderLayer", "LlamaDecoderLayer"]


# --------------------------------------------------------------------------------------
# Config checks and derived quantities
# --------------------------------------------------------------------------------------
def _num(
    cfg: Any,
    key: str,
    value: Any,
    *,
    positive: bool = False,
    integer: bool = False,
    allow_none: bool = False,
) -> None:
    if value is None and allow_none:
        return
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
    if ok and integer:
        ok = float(value).is_integer()
    if ok and positive:
        ok = value > 0
    if not ok:
        kind = "a positive " if positive else "a "
        kind += "integer" if integer else "number"
        raise ConfigError(
            f"{key}={value!r} is not {kind}: fix it on the command line or in the config"
        )


def validate_config(cfg: Any) -> None:
    """All checks that can fail before anything is written."""
    from models.presets import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"unknown model {cfg.model.preset!r}: use model=<{'|'.join(PRESETS)}>")
    if "optimizer" not in cfg or "_target_" not in cfg.optimizer:
        raise ConfigError("no optimizer configured: use optimizer=<adamw|soap|shampoo|muon>")
    lr = cfg.optimizer.get("lr")
    _num(cfg, "optimizer.lr", lr, positive=True)
    t = cfg.train
    _num(cfg, "train.max_steps", t.max_steps, positive=True, integer=True, allow_none=True)
    _num(cfg, "train.tokens_per_param", t.tokens_per_param, positive=True)
    _num(cfg, "train.fraction", t.fraction, positive=True)
    if t.fraction > 1:
        raise ConfigError(f"train.fraction={t.fraction} must be in (0, 1]")
    _num(cfg, "train.eval_every", t.eval_every, positive=True, integer=True)
    _num(cfg, "train.checkpoint_every", t.checkpoint_every, positive=True, integer=True)
    _num(cfg, "train.target_loss", t.target_loss, allow_none=True)
    _num(cfg, "train.z_loss", t.z_loss)
    _num(cfg, "train.max_bad_steps", t.max_bad_steps, integer=True)
    r = cfg.regime
    for k in ("seq_len", "global_batch", "micro_batch", "precondition_frequency"):
        _num(cfg, f"regime.{k}", r[k], positive=True, integer=True)
    _num(cfg, "seed", cfg.seed, integer=True)
    if cfg.resume not in ("auto", "never"):
        raise ConfigError(f"resume={cfg.resume!r}: use resume=auto or resume=never")
    if cfg.train.get("fsdp") and cfg.optimizer_name in WHOLE_MATRIX_OPTIMIZERS:
        raise ConfigError(
            f"train.fsdp=true shards parameters, but {cfg.optimizer_name} preconditions whole matrices: "
            "use DDP (train.fsdp=false, the default) or optimizer=adamw"
        )
    if cfg.wandb.mode not in ("disabled", "offline", "online"):
        raise ConfigError(f"wandb.mode={cfg.wandb.mode!r}: use disabled, offline or online")


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"regime.global_batch={global_batch} is not divisible by micro_batch x world_size = "
            f"{micro_batch} x {world_size}: change regime.micro_batch or the number of processes"
        )
    return global_batch // per_step


def total_steps(cfg: Any, non_embedding_params: int) -> tuple[int, int]:
    """``(full_length, this_run)`` in iterations; ``train.fraction`` shortens the run and its
    whole schedule. The budget counts non-embedding parameters (the paper's sizes)."""
    tokens_per_step = cfg.regime.global_batch * cfg.regime.seq_len
    if cfg.train.max_steps is not None:
        full = int(cfg.train.max_steps)
    else:
        full = max(1, round(cfg.train.tokens_per_param * non_embedding_params / tokens_per_step))
    return full, max(1, round(full * cfg.train.fraction))


def lr_lambda(total: int, warmup_fraction: float, final_fraction: float):
    """Linear warmup then cosine decay to ``final_fraction`` of the peak, over ``total`` steps."""
    warmup = max(1, round(warmup_fraction * total)) if warmup_fraction > 0 else 0

    def f(step: int) -> float:  # step = number of optimizer steps already taken
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def lm_loss(
    logits: torch.Tensor, ids: torch.Tensor, z_loss: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy (mean over tokens) and the total loss with OLMo's z-loss
    ``z * mean(logsumexp(logits)^2)``."""
    logits = logits[:, :-1].float()
    targets = ids[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        return ce, ce + z_loss * lse.square().mean()
    return ce, ce


# --------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------
@dataclass
class Run:
    cfg: Any
    run_dir: Path
    accelerator: Any
    model: Any
    raw_model: Any
    optimizer: Any
    scheduler: Any
    loader: TrainLoader
    val: list[torch.Tensor]
    prep: Prepared
    full_steps: int
    steps: int
    accum: int
    params: dict[str, int]
    clock: TrainClock
    tracker: TargetTracker
    step: int = 0
    bad_steps: int = 0
    eval_history: list[dict[str, float]] = field(default_factory=list)
    is_main: bool = True
    fsdp: bool = False


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: Any) -> Run:
    from accelerate import Accelerator
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from models import build_model, count_parameters
    from soap import build_optimizer

    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    fsdp_plugin = None
    if cfg.train.get("fsdp"):
        from accelerate import FullyShardedDataParallelPlugin

        # FSDP2 (per-parameter sharding), one unit per decoder layer.
        fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=DECODER_LAYERS,
            reshard_after_forward=True,
        )
    acc = Accelerator(
        mixed_precision=mp, cpu=not torch.cuda.is_available(), fsdp_plugin=fsdp_plugin
    )
    accum = grad_accum_steps(cfg.regime.global_batch, cfg.regime.micro_batch, acc.num_processes)
    run_dir = Path(cfg.run_dir)

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    # Rank 0 prepares (and caches) the shards; the others wait and then read the cache.
    with acc.main_process_first():
        prep = prepare(
            data_cfg,
            cfg.regime.seq_len,
            cfg.cache_dir,
            progress=acc.is_main_process and cfg.train.progress,
        )
    train_data = PackedSequences(prep, "train")
    loader = TrainLoader(
        train_data, cfg.regime.micro_batch, accum, acc.num_processes, acc.process_index, cfg.seed
    )
    val = validation_batches(
        PackedSequences(prep, "validation"),
        cfg.train.eval_sequences,
        cfg.train.eval_batch_size,
        acc.num_processes,
        acc.process_index,
    )

    _seed_all(cfg.seed)
    raw = build_model(
        cfg.model.preset,
        vocab_size=prep.vocab_size,
        max_seq_len=cfg.regime.seq_len,
        qk_norm=cfg.model.qk_norm,
        init_std=cfg.model.init_std,
        seed=cfg.seed,
    )
    counts = count_parameters(raw)
    full, steps = total_steps(cfg, counts["non_embedding"])
    if cfg.train.compile:
        raw = torch.compile(raw)
    model = acc.prepare(raw)
    # The optimizer is built after prepare(model), on the parameters the device now holds.
    unwrapped = acc.unwrap_model(model)
    opt = build_optimizer(unwrapped, instantiate(cfg.optimizer))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(steps, cfg.schedule.warmup_fraction, cfg.schedule.final_lr_fraction)
    )
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        accelerator=acc,
        model=model,
        raw_model=unwrapped,
        optimizer=opt,
        scheduler=sched,
        loader=loader,
        val=val,
        prep=prep,
        full_steps=full,
        steps=steps,
        accum=accum,
        params=counts,
        clock=TrainClock(acc.device, cfg.train.clock_skip_steps),
        tracker=TargetTracker(cfg.train.target_loss),
        is_main=acc.is_main_process,
        fsdp=bool(cfg.train.get("fsdp")),
    )


# --------------------------------------------------------------------------------------
# Step and evaluation
# --------------------------------------------------------------------------------------
def train_step(run: Run, micro_batches: list[torch.Tensor]) -> dict[str, float]:
    """One iteration: forward/backward over the micro-batches, clip, optimizer step."""
    acc, model = run.accelerator, run.model
    model.train()
    total_ce = torch.zeros((), device=acc.device)
    for k, ids in enumerate(micro_batches):
        ids = ids.to(acc.device, non_blocking=True)
        sync = k == len(micro_batches) - 1
        # Gradients are all-reduced only on the last micro-batch of the step.
        ctx = acc.no_sync(model) if not sync else contextlib.nullcontext()
        with ctx, acc.autocast():
            logits = model(input_ids=ids).logits
            ce, loss = lm_loss(logits, ids, run.cfg.train.z_loss)
        acc.backward(loss / len(micro_batches))
        total_ce += ce.detach() / len(micro_batches)
    run.clock.mark("fwd_bwd")
    # Mean over ranks: every rank saw a disjoint part of the same global batch.
    loss_val = acc.reduce(total_ce, reduction="mean").item()
    if not math.isfinite(loss_val):
        run.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_val, "skipped": 1.0}
    clip = run.cfg.train.grad_clip
    gn = float(acc.clip_grad_norm_(model.parameters(), clip if clip else float("inf")))
    if not math.isfinite(gn):
        # A non-finite gradient with a finite loss: skip the whole step (every optimizer).
        run.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_val, "grad_norm": gn, "skipped": 1.0}
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.clock.mark("optim")
    return {"loss": loss_val, "grad_norm": gn}


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean token cross-entropy on the fixed validation set (all ranks together)."""
    acc, model = run.accelerator, run.model
    model.eval()
    tot = torch.zeros(2, device=acc.device, dtype=torch.float64)
    for ids in run.val:
        ids = ids.to(acc.device)
        with acc.autocast():
            logits = model(input_ids=ids).logits
        ce, _ = lm_loss(logits, ids, 0.0)
        n = ids[:, 1:].numel()
        tot += torch.tensor([ce.item() * n, n], device=acc.device, dtype=torch.float64)
    tot = acc.reduce(tot, reduction="sum")
    return float(tot[0] / tot[1])


# --------------------------------------------------------------------------------------
# Checkpoints and logs
# --------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    s = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _model_optim_state(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full (unsharded) model and optimizer state; under FSDP every rank takes part."""
    if not run.fsdp:
        return run.raw_model.state_dict(), run.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(run.model, options=opts), get_optimizer_state_dict(
        run.model, run.optimizer, options=opts
    )


def checkpoint(run: Run) -> None:
    run.accelerator.wait_for_everyone()
    model_sd, optim_sd = _model_optim_state(run)
    if run.is_main:
        save_checkpoint(
            run.run_dir,
            {
                "step": run.step,
                "model": model_sd,
                "optimizer": optim_sd,
                "scheduler": run.scheduler.state_dict(),
                "loader": run.loader.state_dict(),
                "clock": run.clock.state_dict(),
                "tracker": run.tracker.state_dict(),
                "eval_history": run.eval_history,
                "bad_steps": run.bad_steps,
                "rng": _rng_state(),
            },
        )
    run.accelerator.wait_for_everyone()


def restore(run: Run, ck: dict[str, Any]) -> None:
    if run.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(run.model, ck["model"], options=opts)
        set_optimizer_state_dict(run.model, run.optimizer, ck["optimizer"], options=opts)
    else:
        run.raw_model.load_state_dict(ck["model"])
        run.optimizer.load_state_dict(ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    run.loader.load_state_dict(ck["loader"])
    run.clock.load_state_dict(ck["clock"])
    run.tracker.load_state_dict(ck["tracker"])
    run.eval_history = list(ck["eval_history"])
    run.bad_steps = ck["bad_steps"]
    run.step = ck["step"]
    _set_rng_state(ck["rng"])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (a kill leaves some)."""
    if not path.exists():
        return
    keep = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


def _optimizer_state_bytes(opt: Any) -> int:
    from soap import optimizer_state_bytes

    return optimizer_state_bytes(opt)


def write_summary(run: Run, status: str, message: str | None = None) -> dict[str, Any]:
    c = run.clock
    final = run.eval_history[-1]["eval_loss"] if run.eval_history else None
    tokens_per_step = run.cfg.regime.global_batch * run.cfg.regime.seq_len
    summary = {
        "status": status,
        "message": message,
        "optimizer": run.cfg.optimizer_name,
        "lr": float(run.cfg.optimizer.lr),
        "model": run.cfg.model.preset,
        "regime": run.cfg.regime.name,
        "seed": int(run.cfg.seed),
        "fraction": float(run.cfg.train.fraction),
        "precondition_frequency": int(run.cfg.regime.precondition_frequency),
        "steps": run.step,
        "planned_steps": run.steps,
        "full_length_steps": run.full_steps,
        "tokens": run.step * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "final_eval_loss": final,
        "target_loss": run.tracker.target,
        "target_reached": run.tracker.reached is not None,
        "steps_to_target": run.tracker.reached["step"] if run.tracker.reached else None,
        "seconds_to_target": run.tracker.reached["seconds"] if run.tracker.reached else None,
        "train_seconds": c.train_seconds,
        "warmup_seconds": c.warmup_seconds,
        "seconds_per_step": c.train_seconds / c.steps_timed if c.steps_timed else None,
        "fwd_bwd_seconds_per_step": c.parts["fwd_bwd"] / c.steps_timed if c.steps_timed else None,
        "optim_seconds_per_step": c.parts["optim"] / c.steps_timed if c.steps_timed else None,
        "data_seconds_per_step": c.parts["data"] / c.steps_timed if c.steps_timed else None,
        "tokens_per_second": tokens_per_step * c.steps_timed / c.train_seconds
        if c.train_seconds
        else None,
        "optimizer_state_bytes": _optimizer_state_bytes(run.optimizer),
        "peak_memory_bytes": _peak_memory(run.accelerator.device),
        "params_total": run.params["total"],
        "params_non_embedding": run.params["non_embedding"],
        "vocab_size": run.prep.vocab_size,
        "world_size": run.accelerator.num_processes,
        "grad_accum": run.accum,
        "eval_history": run.eval_history,
    }
    if run.is_main:
        tmp = run.run_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, run.run_dir / "summary.json")
    return summary


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


def _peak_memory(device: torch.device) -> int | None:
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
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------
class _Signals:
    """SIGTERM/SIGINT set a flag the loop checks after each step (so a checkpoint is written);
    the previous handlers come back on exit, so code that runs several trainings in one
    process (the demo) or anything after them (the report) sees Ctrl-C again."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum


def _prepare_run_dir(cfg: Any) -> tuple[Path, dict[str, Any] | None]:
    run_dir = Path(cfg.run_dir)
    ck = load_checkpoint(run_dir)
    summary = run_dir / "summary.json"
    if cfg.resume == "never" and (ck is not None or summary.exists()):
        raise ConfigError(
            f"{run_dir} already holds a run: pass resume=auto to continue it or a new run_dir="
        )
    return run_dir, ck


def _wandb_id(run_dir: Path) -> str:
    """Stable across processes (unlike ``hash``), so a resumed run continues the same wandb run."""
    import hashlib

    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def run_training(cfg: Any) -> int:
    from omegaconf import OmegaConf

    validate_config(cfg)
    run_dir, ck = _prepare_run_dir(cfg)
    if ck is not None and (run_dir / "summary.json").exists():
        prev = json.loads((run_dir / "summary.json").read_text())
        if prev.get("status") == "completed":
            print(
                f"{run_dir}: already completed ({prev['steps']} steps, final eval loss {prev['final_eval_loss']:.4f}); nothing to do"
            )
            return 0
    run = setup(cfg)
    acc = run.accelerator
    reset_peak_memory(acc.device)
    if run.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        info = run_info() | {
            "world_size": acc.num_processes,
            "device": str(acc.device),
            "data": {
                "root": str(run.prep.root),
                "manifest": {k: v for k, v in run.prep.manifest.items() if k != "splits"},
            },
        }
        (run_dir / "env.json").write_text(json.dumps(info, indent=2, default=str))
    metrics_path = run_dir / "metrics.jsonl"
    if ck is not None:
        restore(run, ck)
        if run.is_main:
            _truncate_metrics(metrics_path, run.step)
            print(f"resumed {run_dir} at step {run.step}")
    elif run.is_main and metrics_path.exists():
        metrics_path.unlink()
    acc.wait_for_everyone()

    wb = None
    if run.is_main and cfg.wandb.mode != "disabled":
        import wandb

        wb = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            mode=cfg.wandb.mode,
            dir=str(run_dir),
            name=f"{cfg.experiment_name}/{cfg.optimizer_name}/{run_dir.name}",
            config=OmegaConf.to_container(cfg, resolve=True),
            resume="allow",
            id=_wandb_id(run_dir),
        )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=run.steps,
        initial=run.step,
        disable=not (run.is_main and cfg.train.progress),
        desc=f"{cfg.optimizer_name} lr={cfg.optimizer.lr:g}",
        unit="it",
        dynamic_ncols=True,
    )
    signals = _Signals().__enter__()
    tokens_per_step = cfg.regime.global_batch * cfg.regime.seq_len
    status, message, code = "completed", None, 0
    saved_at = run.step
    mf = open(metrics_path, "a") if run.is_main else None  # noqa: SIM115 - closed in finally
    try:
        while run.step < run.steps:
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
            rec: dict[str, Any] = {
                "step": run.step,
                "tokens": run.step * tokens_per_step,
                "lr": run.scheduler.get_last_lr()[0],
                "loss": out["loss"],
                "train_seconds": run.clock.train_seconds,
                **timing,
            }
            if "grad_norm" in out:
                rec["grad_norm"] = out["grad_norm"]
            if out.get("skipped"):
                # A skipped iteration consumed its batch but took no optimizer step.
                run.bad_steps += 1
                rec["skipped"] = True
                if run.bad_steps > cfg.train.max_bad_steps:
                    status, code = "diverged", EXIT_DIVERGED
                    message = f"non-finite loss or gradient at step {run.step}; stopped, the last good checkpoint (step {saved_at}) in {run_dir} is kept. Lower optimizer.lr or raise train.max_bad_steps"
                    run.step -= 1
                    break
            if run.step % cfg.train.eval_every == 0 or run.step == run.steps:
                ev = evaluate(run)
                rec["eval_loss"] = ev
                run.eval_history.append(
                    {"step": run.step, "eval_loss": ev, "train_seconds": run.clock.train_seconds}
                )
                run.tracker.update(run.step, run.clock.train_seconds, ev)
            if mf is not None:
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
            if wb is not None:
                wb.log(rec, step=run.step)
            bar.update(1)
            bar.set_postfix(
                loss=f"{out['loss']:.3f}",
                tok_s=f"{tokens_per_step / max(timing['time_step'], 1e-9):.0f}",
            )
            if run.tracker.reached is not None and cfg.train.stop_at_target:
                checkpoint(run)
                saved_at = run.step
                message = f"target {cfg.train.target_loss} reached at step {run.tracker.reached['step']:.1f}; stopped (train.stop_at_target)"
                break
            if signals.received is not None:
                checkpoint(run)
                status, code = "interrupted", EXIT_INTERRUPTED
                message = f"stopped by signal {signals.received} at step {run.step}; checkpoint saved in {run_dir}. Resume with the same command (resume=auto)"
                break
            if run.step % cfg.train.checkpoint_every == 0 or run.step == run.steps:
                checkpoint(run)
                saved_at = run.step
    finally:
        signals.__exit__()
        bar.close()
        if mf is not None:
            mf.close()
    summary = write_summary(run, status, message)
    if wb is not None:
        wb.summary.update({k: v for k, v in summary.items() if not isinstance(v, list)})
        wb.finish()
    if run.is_main:
        if message:
            print(message, file=sys.stderr if code else sys.stdout)
        fl = summary["final_eval_loss"]
        print(
            f"{status}: {run_dir} | steps {run.step}/{run.steps} | final eval loss {fl if fl is None else round(fl, 4)} | train {run.clock.train_seconds:.1f}s"
        )
    acc.end_training()
    return code


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="../configs", config_name="train")
    def _app(cfg: DictConfig) -> float | None:
        try:
            code = run_training(cfg)
        except (ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = EXIT_CONFIG
        except Exception as e:  # Hydra/OmegaConf interpolation and instantiation errors
            from omegaconf.errors import OmegaConfBaseException

            if isinstance(e, (OmegaConfBaseException, ValueError)) and not isinstance(
                e, ConfigError
            ):
                print(f"error: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
                code = EXIT_CONFIG
            else:
                raise
        if code:
            sys.exit(code)
        # Sweepers (e.g. Optuna) minimise the returned value: the final eval loss.
        summary = Path(cfg.run_dir) / "summary.json"
        return json.loads(summary.read_text()).get("final_eval_loss") if summary.exists() else None

    _app()


if __name__ == "__main__":
    main()
