"""Everything a run needs, built from the resolved config: the accelerator (DDP, or FSDP2), the
data, the model with its loss, the optimizer (through :func:`soap.build_optimizer`, the factory
users call), the schedule, the clock and the target tracker."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.clock import TargetTracker, TrainClock
from scripts.trainer.checks import (
    ConfigError,
    compile_enabled,
    grad_accum_steps,
    lr_lambda,
    total_steps,
)
from scripts.trainer.shard import shard_model


@dataclass
class Run:
    cfg: Any
    run_dir: Path
    accelerator: Any
    model: Any  # as prepared by Accelerate (DDP / FSDP2 wrapped)
    raw_model: Any  # models.loss.CausalLMWithLoss
    optimizer: Any
    scheduler: Any
    loader: Any
    val: list[torch.Tensor]
    data_info: dict[str, Any]  # root, manifest (without per-shard lists), vocab_size
    full_steps: int
    steps: int
    accum: int
    params: dict[str, int]
    clock: TrainClock
    tracker: TargetTracker
    step: int = 0
    bad_steps: int = 0
    eval_history: list[dict[str, float]] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)  # resume=force, see identity.py

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.regime.global_batch * self.cfg.regime.seq_len


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def topology(train: Any, world: int) -> tuple[int, int]:
    """``(replicas, shards)`` of the data-parallel mesh: ``(world, 1)`` for DDP, ``(1, world)``
    for FSDP2 (``train.fsdp``), ``(R, S)`` for HSDP (``train.dp_replicate=R``, ``dp_shard=S``
    or -1 for ``world / R``). Sizes that do not make the world are refused in one line."""
    r, s = train.dp_replicate, train.dp_shard
    if r < 1 or (s < 1 and s != -1):
        raise ConfigError(
            f"train.dp_replicate={r}, train.dp_shard={s}: use positive sizes (dp_shard=-1: the "
            "processes left)"
        )
    if r == 1 and s in (-1, 1) and not train.fsdp:
        return world, 1  # DDP
    if s == -1 and world % r:
        raise ConfigError(
            f"train.dp_replicate={r} does not divide the {world} processes started: choose a "
            f"divisor of {world}, or start a multiple of {r} processes"
        )
    s = world // r if s == -1 else s
    if r * s != world:
        raise ConfigError(
            f"train.dp_replicate={r} x train.dp_shard={s} = {r * s} processes, but {world} "
            f"were started: choose sizes whose product is {world}"
        )
    return r, s


def init_process_group(timeout: Any) -> None:
    """Under torchrun: the default process group on the rendezvous store, its keys prefixed
    with the restart attempt (``TORCHELASTIC_RESTART_COUNT``). Without the prefix, a group
    that torchrun restarted after a lost rank could read the dead rank's address from the
    previous attempt and fail with "connection refused" (seen with torch 2.13, gloo, under
    both the static and the c10d rendezvous). Accelerate then uses this group."""
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ or not dist.is_available() or dist.is_initialized():
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts it
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent and rank == 0,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        store=dist.PrefixStore(f"soap-bench/attempt-{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )


def accelerator(cfg: Any) -> Any:
    from accelerate import Accelerator

    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    # Every collective waits at most this long; nothing slow (data preparation) happens inside
    # one, so clusters may keep the timeout short and learn of a dead rank early.
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))
    init_process_group(timedelta(seconds=cfg.train.dist_timeout_s))
    return Accelerator(
        mixed_precision=mp,
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[timeout],
    )


def setup(cfg: Any) -> Run:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from data.pipeline import build_data
    from models import build_model, count_parameters
    from models.loss import CausalLMWithLoss
    from models.presets import get_preset
    from soap import build_optimizer

    acc = accelerator(cfg)
    replicas, shards = topology(cfg.train, acc.num_processes)
    accum = grad_accum_steps(cfg.regime.global_batch, cfg.regime.micro_batch, acc.num_processes)
    non_embedding = get_preset(cfg.model.preset).non_embedding_params(cfg.model.qk_norm)
    full, steps = total_steps(cfg, non_embedding)
    data = build_data(
        OmegaConf.to_object(cfg.data),
        seq_len=cfg.regime.seq_len,
        cache_dir=cfg.cache_dir,
        train_tokens=full * cfg.regime.global_batch * cfg.regime.seq_len,
        micro_batch=cfg.regime.micro_batch,
        grad_accum=accum,
        world_size=acc.num_processes,
        rank=acc.process_index,
        seed=cfg.seed,
        eval_sequences=cfg.train.eval_sequences,
        eval_batch_size=cfg.train.eval_batch_size,
        progress=acc.is_main_process and cfg.train.progress,
    )

    seed_all(cfg.seed)
    lm = build_model(
        cfg.model.preset,
        vocab_size=data.vocab_size,
        max_seq_len=cfg.regime.seq_len,
        qk_norm=cfg.model.qk_norm,
        init_std=cfg.model.init_std,
        seed=cfg.seed,
    )
    counts = count_parameters(lm)
    raw = CausalLMWithLoss(lm, cfg.train.z_loss, cfg.train.loss_chunk_tokens)
    if compile_enabled(cfg, acc.device.type):
        for layer in raw.decoder_layers:  # per block, as torchtitan: composes with DDP/FSDP2
            layer.compile()
    if shards > 1:  # FSDP2 / HSDP: sharded here, on CPU and GPU alike (scripts/trainer/shard.py)
        shard_model(raw, replicas, shards, acc.device)
        model = raw
    else:
        model = acc.prepare(raw)
    # The optimizer is built after prepare(model), on the parameters the device now holds.
    unwrapped = acc.unwrap_model(model)
    opt = build_optimizer(unwrapped, instantiate(cfg.optimizer))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(steps, cfg.schedule.warmup_fraction, cfg.schedule.final_lr_fraction)
    )
    return Run(
        cfg=cfg,
        run_dir=Path(cfg.run_dir),
        accelerator=acc,
        model=model,
        raw_model=unwrapped,
        optimizer=opt,
        scheduler=sched,
        loader=data.loader,
        val=data.validation,
        data_info=data.info,
        full_steps=full,
        steps=steps,
        accum=accum,
        params=counts,
        clock=TrainClock(acc.device, cfg.train.clock_skip_steps),
        tracker=TargetTracker(cfg.train.target_loss),
    )
