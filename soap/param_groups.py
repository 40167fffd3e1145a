"""Parameter groups, the optimizer factory and the Muon + AdamW hybrid.

Grouping rules (documented once, used by every optimizer so comparisons are like for like):

* weight decay applies to matrices (``ndim >= 2``) only: norms' gains and biases are 1-D and
  never decay;
* embeddings (names containing ``embed`` or ``wte``) do not decay unless
  ``decay_embeddings=True`` (OLMo-2 practice); the output projection is a matrix and decays;
* for Muon, only hidden 2-D matrices go to Muon; embeddings, the output projection and every
  1-D tensor use AdamW (Muon is defined for hidden layers only).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .shampoo import Shampoo
from .soap import SOAP

__all__ = [
    "param_groups",
    "build_optimizer",
    "ChainedOptimizer",
    "MuonAdamW",
    "optimizer_state_bytes",
    "resolve_optimizer_class",
]

_EMBED_KEYS = ("embed", "wte", "wpe")
_HEAD_KEYS = ("lm_head", "output", "head")


def _is_embedding(name: str) -> bool:
    return any(k in name for k in _EMBED_KEYS)


def _named(params: Iterable[tuple[str, Tensor]] | nn.Module) -> list[tuple[str, Tensor]]:
    if isinstance(params, nn.Module):
        params = params.named_parameters()
    return [(n, p) for n, p in params if p.requires_grad]


def param_groups(
    named_parameters: Iterable[tuple[str, Tensor]] | nn.Module,
    weight_decay: float | None = None,
    decay_embeddings: bool = False,
) -> list[dict[str, Any]]:
    """Split parameters into a decayed and a non-decayed group (rules in the module doc).

    The decayed group carries no ``weight_decay`` key unless one is given, so the optimizer's
    own default applies; the other group sets ``weight_decay=0``. Names are kept in
    ``param_names`` (torch >= 2.6 reads them; SOAP/Shampoo use them in error messages).
    """
    decay, no_decay = [], []
    for name, p in _named(named_parameters):
        if p.ndim >= 2 and (decay_embeddings or not _is_embedding(name)):
            decay.append((name, p))
        else:
            no_decay.append((name, p))
    groups = []
    if decay:
        g: dict[str, Any] = {"params": [p for _, p in decay], "param_names": [n for n, _ in decay]}
        if weight_decay is not None:
            g["weight_decay"] = weight_decay
        groups.append(g)
    if no_decay:
        groups.append(
            {
                "params": [p for _, p in no_decay],
                "param_names": [n for n, _ in no_decay],
                "weight_decay": 0.0,
            }
        )
    return groups


class ChainedOptimizer(Optimizer):
    """Several optimizers stepped as one (each owns a disjoint set of parameters).

    ``param_groups`` is the concatenation of the children's group dicts (the same objects), so
    LR schedulers and gradient clipping see every parameter and a scheduler's LR change
    reaches the child that owns the group.
    """

    def __init__(self, optimizers: list[Optimizer]) -> None:
        if not optimizers:
            raise ValueError("ChainedOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        merged: dict = {}
        for o in getattr(self, "optimizers", []):
            merged.update(o.state)
        return merged

    @state.setter
    def state(self, value: Any) -> None:  # Optimizer.__init__ assigns it; children own state
        pass

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sds = state_dict["optimizers"]
        if len(sds) != len(self.optimizers):
            raise ValueError(
                f"state dict holds {len(sds)} optimizers, this ChainedOptimizer has {len(self.optimizers)}"
            )
        for o, sd in zip(self.optimizers, sds, strict=True):
            o.load_state_dict(sd)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


def MuonAdamW(
    params: Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]] | nn.Module,
    lr: float = 0.02,
    weight_decay: float = 0.01,
    momentum: float = 0.95,
    adamw_lr: float = 3e-3,
    adamw_betas: tuple[float, float] = (0.95, 0.95),
    adamw_eps: float = 1e-8,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = "match_rms_adamw",
) -> ChainedOptimizer:
    """``torch.optim.Muon`` on hidden 2-D matrices, AdamW on everything else.

    Accepts the groups from :func:`param_groups` (with ``param_names``) or named parameters.
    ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS so one LR scale fits
    both (Moonshot's recipe); ``adamw_lr`` follows the scheduler proportionally because both
    groups are scaled by the same LR multiplier.
    """
    if isinstance(params, nn.Module):
        params = param_groups(params)
    params = list(params)
    if params and isinstance(params[0], tuple):
        params = param_groups(params)
    muon_p, adam_groups = [], []
    for g in params:
        names = g.get("param_names") or [""] * len(g["params"])
        keep, keep_names = [], []
        for n, p in zip(names, g["params"], strict=True):
            hidden = p.ndim == 2 and not _is_embedding(n) and not any(k in n for k in _HEAD_KEYS)
            if hidden:
                muon_p.append(p)
            else:
                keep.append(p)
                keep_names.append(n)
        if keep:
            adam_groups.append({**g, "params": keep, "param_names": keep_names, "lr": adamw_lr})
    opts: list[Optimizer] = []
    if muon_p:
        opts.append(
            torch.optim.Muon(
                muon_p,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn,
            )
        )
    if adam_groups:
        opts.append(
            torch.optim.AdamW(
                adam_groups,
                lr=adamw_lr,
                betas=adamw_betas,
                eps=adamw_eps,
                weight_decay=weight_decay,
            )
        )
    return ChainedOptimizer(opts)


_REGISTRY: dict[str, Callable[..., Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "soap": SOAP,
    "shampoo": Shampoo,
    "muon": MuonAdamW,
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


def build_optimizer(
    named_parameters: Iterable[tuple[str, Tensor]] | nn.Module,
    name: str,
    decay_embeddings: bool = False,
    **hparams: Any,
) -> Optimizer:
    """Build an optimizer by name over sensibly split parameter groups.

    ``adamw`` uses torch's fused kernel on CUDA and foreach elsewhere.
    """
    cls = resolve_optimizer_class(name)
    groups = param_groups(named_parameters, decay_embeddings=decay_embeddings)
    if cls is torch.optim.AdamW and "fused" not in hparams and "foreach" not in hparams:
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        hparams["fused" if on_cuda else "foreach"] = True
    if cls is not torch.optim.AdamW and cls not in (SOAP, Shampoo, MuonAdamW):
        # Third-party optimizers may not accept param_names in groups.
        for g in groups:
            g.pop("param_names", None)
    return cls(groups, **hparams)


def optimizer_state_bytes(opt: Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (views of one buffer counted once)."""
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
