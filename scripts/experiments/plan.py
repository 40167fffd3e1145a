"""What a preset's protocol will run and cost, before anything runs: the composed config,
token budget, iterations and estimated H100-hours (``scripts.reproduce --plan``, also per
experiment of a study). The hours are an estimate (6 N FLOPs per token at 40% of 989 bf16
TFLOP/s), not a measurement."""

from __future__ import annotations

import argparse
from typing import Any

from models.presets import get_preset
from scripts.config import CONFIGS, compose, error_line

PEAK, MFU = 989e12, 0.4


def preset_cfg(preset: str, extra: list[str] | None = None) -> Any:
    """The composed config of an experiment preset (Hydra's compose API)."""
    names = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    if preset not in names:
        raise SystemExit(f"error: unknown preset {preset!r}: choose one of {names}")
    try:
        return compose([f"experiment={preset}", "run_dir=.", *(extra or [])])
    except Exception as e:  # a bad override: one line, exit 2, before any run starts
        raise SystemExit(f"error: {error_line(e)}") from None


FINAL_EVAL_ONLY = 10**9  # train.eval_every past any run's end: the run's final evaluation only


def cell_overrides(
    optimizer: str, lr: float, fraction: float, seed: int, run_dir: Any
) -> list[str]:
    """The overrides of one run of the protocol (the demo's and ``scripts.reproduce``'s).

    A schedule-fraction run (``fraction < 1``, its own full cosine schedule) is evaluated at
    its end only: the paper's power-law fit ``L(N) = a + b N^-beta`` over run lengths and the
    effective-data fit read its final eval loss alone, so its evaluations along the way were
    points nothing read (~15% of such a run's time in the CPU demo). The final loss is the
    same either way: evaluation draws no random numbers and changes no state."""
    return [
        f"optimizer={optimizer}",
        f"optimizer.lr={lr}",
        f"train.fraction={fraction}",
        *([f"train.eval_every={FINAL_EVAL_ONLY}"] if fraction < 1 else []),
        f"seed={seed}",
        f"run_dir={run_dir}",
    ]


def plan(preset: str, fractions: list[float], extra: list[str] | None = None) -> dict:
    cfg = preset_cfg(preset, extra)
    p = get_preset(cfg.model.preset)
    tokens = cfg.train.tokens_per_param * p.non_embedding_params(cfg.model.qk_norm)
    if cfg.train.max_steps:
        tokens = cfg.train.max_steps * cfg.regime.global_batch * cfg.regime.seq_len
    per_step = cfg.regime.global_batch * cfg.regime.seq_len
    steps = round(tokens / per_step)
    hours = 6 * p.total_params() * tokens / (PEAK * MFU) / 3600
    return {
        "preset": preset,
        "model": cfg.model.preset,
        "regime": cfg.regime.name,
        "non_embedding_params": p.non_embedding_params(),
        "tokens": tokens,
        "tokens_per_step": per_step,
        "steps": steps,
        "h100_hours_full_run": hours,
        "h100_hours_fraction_runs": hours * sum(f for f in fractions if f < 1.0),
    }


def budget(pl: dict, args: argparse.Namespace) -> tuple[int, float]:
    """Runs and estimated H100-hours of one experiment: the LR sweep at full length, the
    best LR at the schedule fractions, per optimizer and seed, and ``--best-seeds``."""
    per = len(args.optimizers) * len(args.seeds)
    extra = len(args.optimizers) * len(set(args.best_seeds) - set(args.seeds))
    full = per * len(args.lrs) + extra
    hours = pl["h100_hours_full_run"] * full + pl["h100_hours_fraction_runs"] * per
    return full + per * len(args.fractions), hours


def _tokens(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e8 else f"{n / 1e6:.3g}M"


def plan_line(pl: dict, n_runs: int, hours: float) -> str:
    return (
        f"{pl['preset']}: model {pl['model']} ({pl['non_embedding_params'] / 1e6:.1f}M "
        f"non-embedding), regime {pl['regime']}, {_tokens(pl['tokens'])} tokens "
        f"({pl['tokens'] / pl['non_embedding_params']:.2g} per non-embedding parameter) = "
        f"{pl['steps']} iterations of {pl['tokens_per_step']:,} tokens; "
        f"~{pl['h100_hours_full_run']:.3g} H100-hours per full-length run (estimate), "
        f"{n_runs} runs, ~{hours:.3g} H100-hours in all"
    )
