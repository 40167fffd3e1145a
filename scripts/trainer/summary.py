"""What a run ends with: its record (:class:`scripts.record.RunRecord`, ``summary.json``)."""

from __future__ import annotations

import torch

from scripts.record import EvalPoint, RunRecord, variant_name
from scripts.trainer.memory import peak_memory
from scripts.trainer.run import Run
from soap import optimizer_state_bytes


def summarize(run: Run, status: str, message: str | None) -> RunRecord:
    """The run record (``summary.json``); every rank takes part (state bytes per rank)."""
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
        preset=cfg.protocol.preset,
        phase=cfg.protocol.phase,
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
        train_data_tokens=run.data_info.get("train_tokens"),
        eval_history=[EvalPoint(**e) for e in run.eval_history],
        config_changes=list(run.config_changes),
    )
