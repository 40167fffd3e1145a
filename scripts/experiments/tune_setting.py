"""What a tuning study's trials were measured under, so that a study resumes only under the
same setting, and the values an axis on one list element leaves alone (beta1 beside a beta2
axis). Both read the trial config the trainer composes (:func:`scripts.config.compose`)."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from typing import Any

_COMPOSE = threading.Lock()  # Hydra's compose state is global; workers may be threads

# What may differ between the workers of one study (machine paths, logging), not the setting.
_VOLATILE = ("run_dir", "resume", "cache_dir", "seed", "wandb", "protocol")
_VOLATILE_IN = {"train": ("progress", "log_every"), "data": ("num_proc",)}


@functools.cache
def _composed(opt: str, rest: tuple[str, ...]) -> dict[str, Any]:
    """Composed once per (optimizer, overrides) for both uses below; callers copy before editing."""
    from omegaconf import OmegaConf

    from scripts.config import compose

    with _COMPOSE:
        cfg = compose([f"optimizer={opt}", *rest, "run_dir=."])
        return OmegaConf.to_container(cfg, resolve=True)


def list_keys(opt: str, rest: tuple[str, ...]) -> dict[str, list[float]]:
    """The optimizer's list-valued settings as a trial's config has them, so that an axis on
    one element (beta2) keeps the other where the regime put it (the CPU regime's beta1 0.9),
    not at a fixed default."""
    optim = _composed(opt, rest)["optimizer"]
    return {f"optimizer.{k}": list(v) for k, v in optim.items() if isinstance(v, list)}


def setting(objective: str, axes: list[Any], opt: str, rest: list[str]) -> str:
    """A digest of what a study's trials are measured under: the optimizer's axes and, for
    real training, the whole trial config but the machine-dependent keys."""
    parts: dict[str, Any] = {"axes": [repr(a) for a in axes], "objective": objective}
    if objective == "train":
        full = copy.deepcopy(_composed(opt, tuple(rest)))
        for k in _VOLATILE:
            full.pop(k, None)
        for group, keys in _VOLATILE_IN.items():
            for k in keys:
                full.get(group, {}).pop(k, None)
        parts["config"] = full
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_studies(store: Any, prefix: str, where: str, digests: dict[str, str]) -> str | None:
    """Resume each optimizer's study (``<prefix>-<opt>``) only under the setting its trials
    were measured in: a changed space or training config (a new axis, the regime's betas)
    would mix incomparable trials. Records the setting on a new study; returns the one-line
    refusal, or None."""
    import optuna

    for opt, want in digests.items():
        name = f"{prefix}-{opt}"
        study = optuna.create_study(storage=store, study_name=name, load_if_exists=True)
        have = study.user_attrs.get("setting")
        if have is None and not study.trials:
            study.set_user_attr("setting", want)
        elif have != want:
            return (
                f"study {name} in {where} holds trials measured under another space or "
                "training config: give a new tune.study_name or tune.out, or delete that study"
            )
    return None
