"""One iteration (an optimizer step over ``grad_accum`` micro-batches) and the evaluation."""

from __future__ import annotations

import contextlib
import math

import torch

from scripts.trainer.run import Run
from scripts.trainer.shard import set_gradient_sync


def train_step(run: Run, micro_batches: list[torch.Tensor]) -> dict[str, float]:
    """Forward/backward over the micro-batches, clip, optimizer step. A non-finite loss or
    gradient norm skips the whole step (every optimizer alike) and says so."""
    acc, model = run.accelerator, run.model
    model.train()
    total_ce = torch.zeros((), device=acc.device)
    for k, ids in enumerate(micro_batches):
        # A plain copy: the loader's batches are pageable memory, from which CUDA copies
        # synchronously whatever non_blocking says (only pinned memory overlaps), and a
        # micro-batch of token ids is ~128 KB at 360m: not worth a pinned staging buffer.
        ids = ids.to(acc.device)
        last = k == len(micro_batches) - 1
        # Gradients are all-reduced only on the last micro-batch of the step.
        sharded = set_gradient_sync(model, last)
        ctx = contextlib.nullcontext() if sharded or last else acc.no_sync(model)
        with ctx, acc.autocast():
            ce, loss = model(ids)
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
        run.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_val, "grad_norm": gn, "skipped": 1.0}
    # The norm was read on the host and is finite, so every gradient is: soap's optimizers
    # then skip their own screen (on a GPU a masked path, taken every step otherwise).
    inner = getattr(run.optimizer, "optimizer", run.optimizer)  # accelerate's wrapper
    if hasattr(inner, "grads_checked_finite"):
        inner.grads_checked_finite()
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
            ce, _ = model(ids)
        n = ids[:, 1:].numel()
        tot += torch.stack([ce.double() * n, torch.tensor(float(n), device=acc.device).double()])
    tot = acc.reduce(tot, reduction="sum")
    return float(tot[0] / tot[1])
