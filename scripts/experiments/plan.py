"""What a preset's protocol will run and cost, before anything runs: the composed config,
token budget, iterations and estimated H100-hours (``scripts.reproduce --plan``, also per
experiment of a study). The hours are an estimate (6 N FLOPs per token at 40% of 989 bf16
TFLOP/s), not a measurement."""

from __future__ import annotations

import argparse
from typing import Any

from models.presets import PAPER_VOCAB, effective_init_std, get_preset
from scripts.config import CONFIGS, compose, error_line
from scripts.experiments.protocol import Protocol
from scripts.flops import optimizer_flop_share, output_vocab
from scripts.trainer.checks import total_steps

PEAK, MFU = 989e12, 0.4
# This machine's rate, for the CPU regime's budgets (an estimate, printed as one): `make demo`
# on a 2-core AMD EPYC VM (2026-12-04) ran 25 runs in 362 s, two at once, i.e. 724 run-seconds
# for 17.1M training tokens through 60,600 parameters (evaluation, compile and start-up in).
CPU_SECONDS_PER_TOKEN_PARAM = 7.0e-10
# SOAP's and Shampoo's own step, at these tiny shapes, takes about 7x its FLOP share of the
# step's time (measured: frequency 1 doubles the demo model's step, FLOP share 17% -> 48%);
# the rate above is at the demo's frequency-80 share.
OPTIMIZER_TIME_PER_FLOP_SHARE, DEMO_SHARE = 7.0, 0.17


def preset_cfg(preset: str, extra: list[str] | None = None) -> Any:
    """The composed config of an experiment preset (Hydra's compose API)."""
    names = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
    if preset not in names:
        raise SystemExit(f"error: unknown preset {preset!r}: choose one of {names}")
    try:
        return compose([f"experiment={preset}", "run_dir=.", *(extra or [])])
    except Exception as e:  # a bad override: one line, exit 2, before any run starts
        raise SystemExit(f"error: {error_line(e)}") from None


def train_tokens(cfg: Any) -> int | None:
    """Training tokens of the run's data when they are known without preparing anything: the
    manifest of data already prepared in the cache (``scripts.prepare``), else None."""
    import json

    from omegaconf import OmegaConf

    from data.prepare import prepared_root

    if cfg.data.mode != "prepared":
        return None
    try:
        root = prepared_root(OmegaConf.to_object(cfg.data), cfg.regime.seq_len, cfg.cache_dir)
        manifest = json.loads((root / "manifest.json").read_text())
        return int(manifest["splits"]["train"]["sequences"]) * int(cfg.regime.seq_len)
    except (OSError, ValueError, KeyError):
        return None


def plan(preset: str, fractions: list[float], extra: list[str] | None = None) -> dict:
    """The experiment's budget and the proportions the CPU regime keeps from the paper
    (README, "The CPU regime"): tokens per non-embedding parameter (paper 20), passes over the
    training data (paper: under 1; here at most 4), the output layer's share of the
    non-embedding parameters (paper 360m: 32100 x 1280 / 360M = 11%), tokens per step per
    parameter (paper 360m: 0.0058 at 2M, 0.00073 at 256k) and precondition frequency x tokens
    per step (paper: 10 x 2M = 80 x 256k = 21M tokens between eigenbasis refreshes)."""
    cfg = preset_cfg(preset, extra)
    p = get_preset(cfg.model.preset)
    n = p.non_embedding_params(cfg.model.qk_norm)
    per_step = cfg.regime.global_batch * cfg.regime.seq_len
    steps, _ = total_steps(cfg, n)
    tokens = steps * per_step
    hours = 6 * p.total_params() * tokens / (PEAK * MFU) / 3600
    vocab = output_vocab(cfg)
    data = train_tokens(cfg)
    share = optimizer_flop_share(cfg, "soap")
    cpu = CPU_SECONDS_PER_TOKEN_PARAM * (n + 2 * (vocab or PAPER_VOCAB) * p.d_model) * tokens
    slow = (1 + OPTIMIZER_TIME_PER_FLOP_SHARE * share) / (
        1 + OPTIMIZER_TIME_PER_FLOP_SHARE * DEMO_SHARE
    )
    return {
        "preset": preset,
        "model": cfg.model.preset,
        "regime": cfg.regime.name,
        "non_embedding_params": n,
        "tokens": tokens,
        "tokens_per_param": tokens / n,
        "passes": tokens / data if data else None,
        "output_share": vocab * p.d_model / n if vocab else None,
        "tokens_per_step": per_step,
        "tokens_per_step_per_param": per_step / n,
        "precondition_frequency": int(cfg.regime.precondition_frequency),
        # the init's scale against the width (paper 360m: OLMo-2's 0.02 x sqrt(1280) = 0.72)
        "init_std_x_sqrt_width": effective_init_std(
            cfg.model.preset, cfg.model.init_std, cfg.model.init_std_width
        )
        * p.d_model**0.5,
        "tokens_between_refreshes": int(cfg.regime.precondition_frequency) * per_step,
        "steps": steps,
        "soap_flop_share": share,
        "h100_hours_full_run": hours,
        "h100_hours_fraction_runs": hours * sum(f for f in fractions if f < 1.0),
        "cpu_seconds_full_run": cpu,  # this machine's rate (estimate)
        "cpu_seconds_full_run_preconditioned": cpu * slow,  # SOAP and Shampoo
        "fractions": [f for f in fractions if f < 1.0],
    }


def runs_per_optimizer(args: argparse.Namespace) -> tuple[int, int]:
    """Per optimizer: full-length runs (the LR sweep and ``--best-seeds``) and the seeds each
    schedule fraction runs with, counted by :meth:`Protocol.full_runs`."""
    p = Protocol(
        preset="plan",
        optimizers=list(args.optimizers),
        lrs={o: list(args.lrs) for o in args.optimizers},
        seeds=list(args.seeds),
        best_seeds=list(args.best_seeds),
        fraction_seeds=args.fraction_seeds,
        runoff=getattr(args, "runoff", 1),
    )
    return p.full_runs(p.optimizers[0]), len(p.seeds_per_fraction)


def budget(pl: dict, args: argparse.Namespace) -> tuple[int, float]:
    """Runs and estimated H100-hours of one experiment: the LR sweep at full length, the
    best LR at the schedule fractions, per optimizer and seed, and ``--best-seeds``."""
    full, per = (len(args.optimizers) * n for n in runs_per_optimizer(args))
    hours = pl["h100_hours_full_run"] * full + pl["h100_hours_fraction_runs"] * per
    return full + per * len(args.fractions), hours


def cpu_minutes(pl: dict, args: argparse.Namespace) -> float:
    """The wall-clock minutes :func:`budget`'s runs would take on the 2-core machine the rate
    was measured on, ``args.jobs`` at once (an estimate: compare it with the run's own time)."""
    full, per = runs_per_optimizer(args)
    lengths = full + per * sum(pl["fractions"])  # in full-length runs
    seconds = sum(
        lengths * pl["cpu_seconds_full_run_preconditioned" if o in ("soap", "shampoo")
                     else "cpu_seconds_full_run"]
        for o in args.optimizers
    )  # fmt: skip
    return seconds / max(1, getattr(args, "jobs", 1)) / 60


def _tokens(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e8 else f"{n / 1e6:.3g}M"


def regime_line(pl: dict) -> str:
    """The proportions of :func:`plan`, in one line."""
    share = f"{pl['output_share']:.0%}" if pl["output_share"] is not None else "unknown"
    passes = f"{pl['passes']:.2g}" if pl["passes"] is not None else "unknown until prepared"
    return (
        f"  {pl['tokens_per_param']:.3g} tokens per non-embedding parameter, {passes} passes "
        f"over the training data, output layer {share} of the non-embedding parameters, "
        f"{pl['tokens_per_step_per_param']:.2g} tokens per step per parameter, precondition "
        f"frequency {pl['precondition_frequency']} ({pl['tokens_between_refreshes']:,} tokens "
        f"between refreshes, {pl['steps'] / pl['precondition_frequency']:.0f} per run); "
        f"SOAP's step {pl['soap_flop_share']:.2%} of the model's FLOPs per step; "
        f"init std x sqrt(width) {pl['init_std_x_sqrt_width']:.2f} (paper 360m: 0.72)"
    )


def plan_line(pl: dict, n_runs: int, hours: float) -> str:
    return (
        f"{pl['preset']}: model {pl['model']} ({pl['non_embedding_params'] / 1e6:.3g}M "
        f"non-embedding), regime {pl['regime']}, {_tokens(pl['tokens'])} tokens "
        f"({pl['tokens'] / pl['non_embedding_params']:.2g} per non-embedding parameter) = "
        f"{pl['steps']} iterations of {pl['tokens_per_step']:,} tokens; "
        f"~{pl['h100_hours_full_run']:.3g} H100-hours per full-length run (estimate), "
        f"{n_runs} runs, ~{hours:.3g} H100-hours in all\n{regime_line(pl)}"
    )
