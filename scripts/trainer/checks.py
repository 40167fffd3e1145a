"""Config checks that can fail before anything is written, and the quantities derived from
the config (batch arithmetic, run length, the learning-rate schedule). Types and unknown keys
are Hydra's job (:mod:`scripts.config`); these are the checks a schema cannot express."""

from __future__ import annotations

import math
from typing import Any

from models.presets import PRESETS
from scripts.config import unknown_keys

EXIT_CONFIG, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class ConfigError(ValueError):
    """A bad configuration value, with a one-line message naming the fix."""


def _need(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} {what}: fix it on the command line or in the config")


def validate(cfg: Any) -> None:
    """The value checks (``ConfigError``), in the order a user would fix them."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown key {', '.join(unknown)}: no schema declares it (a '+' override adds it "
            "unchecked); fix the spelling, or give your own optimizer class as _target_ to pass "
            "it keywords"
        )
    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"unknown model {cfg.model.preset!r}: use model=<{'|'.join(PRESETS)}>")
    if "optimizer" not in cfg or "_target_" not in cfg.optimizer:
        raise ConfigError("no optimizer configured: use optimizer=<adamw|soap|shampoo|muon>")
    importable(str(cfg.optimizer._target_))
    lr = cfg.optimizer.get("lr")
    _need(
        isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0,
        "optimizer.lr",
        lr,
        "must be > 0",
    )
    betas = cfg.optimizer.get("betas")
    if betas is not None:  # torch's AdamW would fail deep inside its first step
        b = list(betas)
        _need(
            len(b) in (2, 3) and all(isinstance(x, (int, float)) and 0 <= x < 1 for x in b),
            "optimizer.betas",
            b,
            "must be two numbers in [0, 1), e.g. [0.9,0.95] (three for AdEMAMix)",
        )
    t = cfg.train
    _need(t.max_steps is None or t.max_steps > 0, "train.max_steps", t.max_steps, "must be > 0")
    _need(t.tokens_per_param > 0, "train.tokens_per_param", t.tokens_per_param, "must be > 0")
    _need(0 < t.fraction <= 1, "train.fraction", t.fraction, "must be in (0, 1]")
    for k in (
        "eval_every",
        "checkpoint_every",
        "eval_sequences",
        "eval_batch_size",
        "log_every",
        "dist_timeout_s",
    ):
        _need(t[k] > 0, f"train.{k}", t[k], "must be > 0")
    _need(t.max_bad_steps >= 0, "train.max_bad_steps", t.max_bad_steps, "must be >= 0")
    _need(t.z_loss >= 0, "train.z_loss", t.z_loss, "must be >= 0")
    _need(
        t.target_loss is None or math.isfinite(t.target_loss),
        "train.target_loss",
        t.target_loss,
        "must be a finite number",
    )
    _need(
        str(t.compile).lower() in ("auto", "true", "false"),
        "train.compile",
        t.compile,
        "must be auto, true or false",
    )
    _need(
        t.mixed_precision in ("auto", "no", "bf16"),
        "train.mixed_precision",
        t.mixed_precision,
        "must be auto, no or bf16",
    )
    r = cfg.regime
    for k in ("seq_len", "global_batch", "micro_batch", "precondition_frequency"):
        _need(r[k] > 0, f"regime.{k}", r[k], "must be > 0")
    _need(r.seq_len >= 2, "regime.seq_len", r.seq_len, "must be >= 2")
    if cfg.resume not in ("auto", "never", "force"):
        raise ConfigError(f"resume={cfg.resume!r}: use resume=auto, never or force")
    _need(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "must be >= 1")
    if cfg.wandb.mode not in ("disabled", "offline", "online"):
        raise ConfigError(f"wandb.mode={cfg.wandb.mode!r}: use disabled, offline or online")
    if cfg.data.mode not in ("prepared", "stream"):
        raise ConfigError(f"data.mode={cfg.data.mode!r}: use prepared or stream")


# Optional libraries behind the optimizers the configs name, and the extra that installs each.
EXTRAS = {"heavyball": "lineup", "pytorch_optimizer": "lineup", "schedulefree": "lineup"}


def importable(target: str) -> None:
    """``optimizer._target_`` imports, or one line naming the extra that installs it (Hydra's
    own error is several lines and names no fix)."""
    from soap.factory import resolve_optimizer_class

    try:
        resolve_optimizer_class(target)
    except ValueError as e:
        missing = getattr(e.__cause__, "name", None)  # the module that failed to import
        root = (missing or target.split(":")[0]).split(".")[0]
        fix = (
            f"pip install -e '.[{EXTRAS[root]}]'"
            if root in EXTRAS
            else "install the package that provides it, or fix the import path"
        )
        cause = str(e.__cause__ or e).splitlines()[0]
        raise ConfigError(
            f"optimizer._target_={target} cannot be imported ({cause}): {fix}"
        ) from None


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


def compile_enabled(cfg: Any, device_type: str) -> bool:
    """``train.compile``: auto compiles the decoder layers on CUDA (compile time is warm-up).
    ``true`` on CPU needs a C++ compiler (Inductor's CPU backend writes C++): without one
    the run stops here, in one line, instead of at its first forward."""
    value = str(cfg.train.compile).lower()
    on = value == "true" or (value == "auto" and device_type == "cuda")
    if on and device_type == "cpu" and cpp_compiler() is None:
        raise ConfigError(
            "train.compile=true on CPU needs a C++ compiler for torch.compile and none was "
            "found (CXX, else g++): install one (e.g. apt-get install g++) or pass "
            "train.compile=false"
        )
    return on


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use, or None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let torch.compile itself decide
        return "unknown"
    try:
        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - Inductor's InvalidCxxCompiler and its kin
        return None
