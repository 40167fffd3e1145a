"""Hyperparameter checks shared by the optimizers here (``ValueError`` with a readable message),
run by ``add_param_group`` for every group, before any state exists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

NONFINITE_MODES = ("skip", "raise")
DISTRIBUTED_MODES = ("auto", "off")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_lr(group: dict[str, Any], name: str) -> None:
    """The one learning-rate check of every optimizer here: a number (or 0-d tensor) >= 0, as
    ``torch.optim`` accepts (the trainer also refuses 0, which trains nothing)."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        lr = float(lr)
    _check(
        isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0.0,
        f"{name}: invalid learning rate lr={lr!r} (must be >= 0)",
    )


def check_modes(group: dict[str, Any], name: str) -> None:
    """``nonfinite_grad`` and ``distributed``, which every optimizer here takes."""
    _check(
        group["nonfinite_grad"] in NONFINITE_MODES,
        f"{name}: nonfinite_grad must be one of {NONFINITE_MODES}, got {group['nonfinite_grad']!r}",
    )
    _check(
        group["distributed"] in DISTRIBUTED_MODES,
        f"{name}: distributed must be one of {DISTRIBUTED_MODES}, got {group['distributed']!r}",
    )


def validate_adam(group: dict[str, Any], name: str) -> None:
    """What Adam-style optimizers share: lr, betas, weight decay, the modes."""
    check_lr(group, name)
    betas = group["betas"]
    _check(
        isinstance(betas, (tuple, list)) and len(betas) == 2,
        f"{name}: betas must be a pair (beta1, beta2), got {betas!r}",
    )
    for i, b in enumerate(betas):
        _check(0.0 <= float(b) < 1.0, f"{name}: invalid beta{i + 1}={b!r} (must be in [0, 1))")
    _check(
        float(group["weight_decay"]) >= 0.0,
        f"{name}: invalid weight_decay={group['weight_decay']!r} (must be >= 0)",
    )
    check_modes(group, name)


def validate_common(group: dict[str, Any], name: str) -> None:
    """SOAP's and Shampoo's shared checks: the Adam ones plus the preconditioner's."""
    validate_adam(group, name)
    check_positive_int(group, "precondition_frequency", name)
    _check(
        group["data_format"] in ("channels_first", "channels_last"),
        f"{name}: data_format must be 'channels_first' or 'channels_last', got {group['data_format']!r}",
    )


def check_positive_int(group: dict[str, Any], key: str, name: str) -> None:
    v = group[key]
    _check(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        f"{name}: {key} must be an integer >= 1, got {v!r}",
    )


def check_bools(group: dict[str, Any], keys: Iterable[str], name: str) -> None:
    for k in keys:
        _check(isinstance(group[k], bool), f"{name}: {k} must be a bool, got {group[k]!r}")


# A hyperparameter only one optimizer class has: names the class that wrote a state dict.
_SIGNATURES = (
    ("shampoo_beta", "SOAP"),
    ("max_preconditioner_dim", "Shampoo"),
    ("ns_steps", "Muon"),
    ("amsgrad", "AdamW"),  # torch.optim.AdamW / Adam
)


_REFERENCE_KEYS = ("GG", "Q")  # state entries of the public reference SOAP


def refuse_foreign_state(state_dict: dict[str, Any], name: str) -> None:
    """A state dict another optimizer class wrote (whose state entries differ), or the public
    reference SOAP's (``GG``/``Q``), is refused in one line naming where it belongs."""
    writer = state_dict_writer(state_dict)
    if writer is not None and writer != name:
        raise ValueError(
            f"{name}.load_state_dict: this state dict was written by {writer}, whose state "
            f"differs: load it into {writer}, or start {name} from fresh state"
        )
    for st in state_dict.get("state", {}).values():
        if isinstance(st, dict) and any(k in st for k in _REFERENCE_KEYS):
            raise ValueError(
                f"{name}.load_state_dict: this state dict comes from the reference SOAP "
                "implementation (entries 'GG'/'Q'), whose layout differs: load it into the "
                "reference class, or start soap.SOAP from fresh state"
            )


def state_dict_writer(state_dict: dict[str, Any]) -> str | None:
    """The optimizer class that wrote ``state_dict``, when its hyperparameters tell."""
    if "optimizers" in state_dict:
        return "MuonAdamW (a ChainedOptimizer)"
    keys = set().union(*(set(g) for g in state_dict.get("param_groups", [])))
    for key, name in _SIGNATURES:
        if key in keys:
            return name
    if {"betas", "distributed"} <= keys:  # soap.adamw.AdamW: none of the keys above
        return "AdamW"
    return None
