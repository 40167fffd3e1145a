"""Build an optimizer by name over sensibly split parameter groups; count its state."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .grouping import param_groups
from .hybrid import ChainedOptimizer, MuonAdamW
from .muon import Muon
from .shampoo import Shampoo
from .soap import SOAP

__all__ = ["build_optimizer", "optimizer_state_bytes", "resolve_optimizer_class"]

_REGISTRY: dict[str, Callable[..., Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "soap": SOAP,
    "shampoo": Shampoo,
    "muon": MuonAdamW,
    "muon-only": Muon,
}


def resolve_optimizer_class(name: str) -> Callable[..., Optimizer]:
    """A registry name (``adamw``, ``soap``, ``shampoo``, ``muon``) or an import path
    (``torch.optim.SGD``, ``heavyball:SOAP``, ``pytorch_optimizer.SOAP``)."""
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    module, sep, attr = name.partition(":")
    if not sep:
        module, _, attr = name.rpartition(".")
    if not module or not attr:
        raise ValueError(
            f"unknown optimizer {name!r}: use one of {sorted(_REGISTRY)} or an import path like 'torch.optim.SGD'"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import optimizer {name!r}: {e}") from e


def _target(optimizer: Any) -> Any:
    """The class behind a name, an import path, a class, or a ``functools.partial`` of one
    (what a Hydra ``_partial_: true`` config instantiates to)."""
    if isinstance(optimizer, str):
        return resolve_optimizer_class(optimizer)
    while isinstance(optimizer, functools.partial):
        optimizer = optimizer.func
    return optimizer


def build_optimizer(
    params: nn.Module | Iterable[tuple[str, Tensor]],
    optimizer: str | Callable[..., Optimizer],
    decay_embeddings: bool = False,
    rules: Mapping[str, str] | None = None,
    **hparams: Any,
) -> Optimizer:
    """Build ``optimizer`` over parameter groups split by :mod:`soap.grouping`.

    ``optimizer`` is a registry name (``adamw``, ``soap``, ``shampoo``, ``muon``), an import
    path (``torch.optim.SGD``, ``heavyball:ForeachSOAP``), or a callable taking parameter groups
    (a class, or a partial such as Hydra's ``_partial_: true``); ``hparams`` go to it. Pass the
    module rather than ``named_parameters()`` so that parameters are grouped by module type and
    tying. ``adamw`` uses torch's fused kernel on CUDA and foreach elsewhere; optimizers from
    outside this package get groups without ``param_names``.
    """
    make = resolve_optimizer_class(optimizer) if isinstance(optimizer, str) else optimizer
    cls = _target(make)
    if isinstance(cls, type) and issubclass(cls, MuonAdamW):  # it groups its parameters itself
        return make(params, decay_embeddings=decay_embeddings, **hparams)
    groups = param_groups(params, decay_embeddings=decay_embeddings, rules=rules)
    if cls is torch.optim.AdamW and not ({"fused", "foreach"} & _given(make, hparams)):
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        hparams["fused" if on_cuda else "foreach"] = True
    # torch >= 2.6 reads param_names; optimizers from elsewhere may refuse unknown group keys.
    if cls not in (SOAP, Shampoo, Muon) and not str(getattr(cls, "__module__", "")).startswith(
        "torch"
    ):
        for g in groups:
            g.pop("param_names", None)
    return make(groups, **hparams)


def _given(make: Any, hparams: dict[str, Any]) -> set[str]:
    keys = set(hparams)
    while isinstance(make, functools.partial):
        keys |= set(make.keywords)
        make = make.func
    return keys


def optimizer_state_bytes(opt: Optimizer) -> int:
    """Bytes held by the optimizer's state tensors on this rank (views of one buffer counted
    once; in the distributed mode, only the parameters this rank owns)."""
    if isinstance(opt, ChainedOptimizer):
        return sum(optimizer_state_bytes(o) for o in opt.optimizers)
    inner = getattr(opt, "optimizer", None)  # accelerate's AcceleratedOptimizer
    if isinstance(inner, Optimizer) and inner is not opt:
        return optimizer_state_bytes(inner)
    seen: set[tuple[int, int]] = set()
    total = 0

    def visit(v: Any) -> None:
        nonlocal total
        if isinstance(v, Tensor):
            key = (v.data_ptr(), v.numel())
            if key not in seen and v.numel() > 0:
                seen.add(key)
                total += v.numel() * v.element_size()
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)

    for st in opt.state.values():
        visit(st)
    return total
