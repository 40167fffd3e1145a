"""Everything a run needs, built from the resolved config: the accelerator (DDP, or FSDP2), the
data, the model with its loss, the optimizer (through :func:`soap.build_optimizer`, the factory
users call), the schedule, the clock and the target tracker."""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from data.pipeline import build_data
from models import build_model, count_parameters
from models.loss import CausalLMWithLoss
from models.presets import get_preset
from scripts.clock import TargetTracker, TrainClock
from scripts.trainer.checks import ConfigError, compile_enabled, grad_accum_steps, total_steps
from scripts.trainer.optimizers import check_schedulable, check_shardable, training_weights
from scripts.trainer.run import Run
from scripts.trainer.schedule import scheduler
from scripts.trainer.shard import shard_model
from soap import SOAP, Muon, MuonAdamW, Shampoo, build_optimizer
from soap.factory import _target


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


def accelerator(cfg: DictConfig) -> Accelerator:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    # Every collective waits at most this long; nothing slow (data preparation) happens inside
    # one, so clusters may keep the timeout short and learn of a dead rank early.
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))
    init_process_group(timedelta(seconds=cfg.train.dist_timeout_s))
    return Accelerator(
        mixed_precision=mp,
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[timeout],
    )


def setup(cfg: DictConfig) -> Run:
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
        seed=cfg.seed if cfg.data_seed is None else cfg.data_seed,
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
        init_std_width=cfg.model.init_std_width,
        seed=cfg.seed,
    )
    counts = count_parameters(lm)
    raw = CausalLMWithLoss(lm, cfg.train.z_loss, cfg.train.loss_chunk_tokens)
    if compile_enabled(cfg, acc.device.type):
        for layer in raw.decoder_layers:  # per block, as torchtitan: composes with DDP/FSDP2
            layer.compile()
    make = instantiate(cfg.optimizer)
    if shards > 1:  # FSDP2 / HSDP: sharded here, on CPU and GPU alike (scripts/trainer/shard.py)
        check_shardable(_target(make), cfg.optimizer_name, (SOAP, Shampoo, Muon, MuonAdamW))
        shard_model(raw, replicas, shards, acc.device)
        model = raw
    else:
        model = acc.prepare(raw)
    # The optimizer is built after prepare(model), on the parameters the device now holds.
    unwrapped = acc.unwrap_model(model)
    opt = build_optimizer(unwrapped, make)
    check_schedulable(opt, cfg.optimizer_name)
    training_weights(opt)  # Schedule-Free starts in evaluation mode
    sched = scheduler(opt, steps, cfg.schedule.warmup_fraction, cfg.schedule.final_lr_fraction)
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
