"""Cost before commitment: the run's plan in one line before the first step, and an estimate
of its time from the first measured steps, with a warning when a run repeats its data many
times or would take hours on a CPU (the README's commands without ``train.max_steps`` start
runs of thousands of steps)."""

from __future__ import annotations

from scripts.trainer.run import Run

EPOCHS_WARN = 4.0  # passes over the training data beyond which a run measures memorisation
CPU_HOURS_WARN = 1.0
ESTIMATE_AFTER = 3  # timed steps before the estimate


def plan_line(run: Run) -> list[str]:
    """The plan, and warnings, as lines to print."""
    tokens = run.steps * run.tokens_per_step
    per_param = tokens / max(1, run.params["non_embedding"])
    data_tokens = run.data_info.get("train_tokens")
    epochs = tokens / data_tokens if data_tokens else None
    line = (
        f"plan: {run.steps} steps x {run.tokens_per_step} tokens = {tokens / 1e6:.2f}M tokens, "
        f"{per_param:.2f} tokens per non-embedding parameter"
        + (f", {epochs:.2f} passes over the training data" if epochs is not None else "")
    )
    lines = [line]
    if epochs is not None and epochs > EPOCHS_WARN:
        lines.append(
            f"warning: the run reads its training data {epochs:.0f} times (memorisation, not "
            "optimisation): lower train.max_steps or train.tokens_per_param, or use more data"
        )
    return lines


def estimate_line(run: Run) -> list[str]:
    """After ``ESTIMATE_AFTER`` timed steps: the estimated training time of the whole run."""
    c = run.clock
    if c.steps_timed != ESTIMATE_AFTER or not c.train_seconds:
        return []
    per_step = c.train_seconds / c.steps_timed
    hours = per_step * (run.steps - run.step) / 3600
    lines = [
        f"estimate: {per_step:.3g} s per step, {hours * 60:.1f} min for the remaining "
        f"{run.steps - run.step} steps (training only, from the first {c.steps_timed} timed steps)"
    ]
    if run.accelerator.device.type == "cpu" and hours > CPU_HOURS_WARN:
        lines.append(
            f"warning: about {hours:.1f} h on a CPU: set train.max_steps (e.g. 200) or use a "
            "smaller model; Ctrl-C saves a checkpoint"
        )
    return lines
