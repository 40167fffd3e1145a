"""Several optimizers stepped as one, and the Muon + AdamW hybrid built on it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .adamw import AdamW
from .grouping import ParamInfo, classify, param_groups
from .muon import Muon

__all__ = ["ChainedOptimizer", "MuonAdamW"]


def _infos(params: Any) -> list[ParamInfo]:
    """Classify a module, named parameters, or groups carrying ``param_names``."""
    if isinstance(params, nn.Module):
        return classify(params)
    params = list(params)
    if params and isinstance(params[0], dict):
        named = []
        for g in params:
            names = g.get("param_names") or [f"param{i}" for i in range(len(g["params"]))]
            named += list(zip(names, g["params"], strict=True))
        return classify(named)
    return classify(params)


class ChainedOptimizer(Optimizer):
    """Several optimizers stepped as one (each owns a disjoint set of parameters).

    ``param_groups`` is the concatenation of the children's group dicts (the same objects), so
    LR schedulers and gradient clipping see every parameter and a scheduler's LR change
    reaches the child that owns the group.

    Momentum has one name across children: ``momentum``. A group with Adam's ``betas`` also
    carries ``momentum`` (its beta1), and a changed ``momentum`` is copied into ``betas[0]``
    before each step, so torch's schedulers that cycle momentum (``OneCycleLR``, ``CyclicLR``,
    which look for ``momentum`` in ``defaults``) reach every child.
    """

    def __init__(self, optimizers: list[Optimizer]) -> None:
        if not optimizers:
            raise ValueError("ChainedOptimizer needs at least one optimizer")
        children = list(optimizers)
        params = [p for o in children for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.optimizers = children  # from here on, param_groups are the children's
        self._share_momentum()
        first = self.param_groups[0]
        self.defaults = {"lr": first["lr"], "momentum": first.get("momentum")}

    def _share_momentum(self) -> None:
        for g in self.param_groups:
            if "betas" in g:
                if "momentum" not in g:
                    g["momentum"] = g["betas"][0]
                elif g["momentum"] != g["betas"][0]:
                    g["betas"] = (g["momentum"], *g["betas"][1:])

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The children's groups, read anew each time: a child's ``load_state_dict`` replaces
        its group dicts, and a list taken once would then hold stale copies, so an LR
        scheduler driving this optimizer (it writes ``param_groups[i]["lr"]`` every step)
        would stop reaching the children after a resume (the second step after it went on
        at the checkpoint's LR: found by tests/test_lineup.py)."""
        children = self.__dict__.get("optimizers")
        if children is None:  # inside Optimizer.__init__
            return self.__dict__.setdefault("_init_groups", [])
        return [g for o in children for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        if "optimizers" not in self.__dict__:  # Optimizer.__init__ assigns it
            self.__dict__["_init_groups"] = value

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
        self._share_momentum()
        for o in self.optimizers:
            o.step()
        return loss

    @property
    def comm_bytes_per_step(self) -> int:
        """Bytes this rank sent and received in the children's last distributed step."""
        return sum(getattr(o, "comm_bytes_per_step", 0) for o in self.optimizers)

    @property
    def skipped_updates(self) -> Any:
        counts = [
            o.skipped_updates
            for o in self.optimizers
            if getattr(o, "skipped_updates", None) is not None
        ]
        return sum(counts) if counts else None

    def grads_checked_finite(self) -> None:
        """:meth:`soap._base.BucketedOptimizer.grads_checked_finite`, for every child that
        has it."""
        for o in self.optimizers:
            if hasattr(o, "grads_checked_finite"):
                o.grads_checked_finite()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "optimizers" not in state_dict:
            from ._validate import state_dict_writer

            writer = state_dict_writer(state_dict) or "another optimizer"
            raise ValueError(
                f"MuonAdamW.load_state_dict: this state dict was written by {writer}, not by a "
                "ChainedOptimizer: load it into that optimizer, or start MuonAdamW from fresh state"
            )
        sds = state_dict["optimizers"]
        if len(sds) != len(self.optimizers):
            raise ValueError(
                f"state dict holds {len(sds)} optimizers, this ChainedOptimizer has {len(self.optimizers)}"
            )
        for o, sd in zip(self.optimizers, sds, strict=True):
            o.load_state_dict(sd)
        self._share_momentum()


LR = 3e-3  # MuonAdamW's one LR scale: with match_rms_adamw, Muon's step has AdamW's RMS


class MuonAdamW(ChainedOptimizer):
    """:class:`soap.Muon` (``torch.optim.Muon``'s maths, batched) on hidden 2-D matrices and
    AdamW (``torch.optim.AdamW``'s maths, :class:`soap.adamw.AdamW`) on everything else; both
    parts are distributed across ranks like SOAP (``distributed``).

    Accepts a module (parameters classified by module type, :mod:`soap.grouping`), named
    parameters, or the groups of :func:`soap.param_groups` (with ``param_names``).
    ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS (Moonshot's recipe,
    ``0.2 max(m, n)^{1/2}``), so one LR scale fits both: ``lr`` and ``adamw_lr`` default to
    the same :data:`LR`. ``adamw_lr`` follows the scheduler proportionally because both groups
    are scaled by the same LR multiplier. (:class:`soap.Muon` alone keeps
    ``torch.optim.Muon``'s defaults, ``lr=1e-3`` without the adjustment.)
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]] | nn.Module,
        lr: float = LR,
        weight_decay: float = 0.01,
        momentum: float = 0.95,
        adamw_lr: float = LR,
        adamw_betas: tuple[float, float] = (0.95, 0.95),
        adamw_eps: float = 1e-8,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "match_rms_adamw",
        decay_embeddings: bool = False,
        distributed: str = "auto",
    ) -> None:
        infos = _infos(params)
        muon_p = [i.param for i in infos if i.muon]
        adam_groups = [
            {**g, "lr": adamw_lr}
            for g in param_groups(
                [(i.name, i.param) for i in infos if not i.muon], decay_embeddings=decay_embeddings
            )
        ]
        opts: list[Optimizer] = []
        if muon_p:
            opts.append(
                Muon(
                    muon_p,
                    lr=lr,
                    weight_decay=weight_decay,
                    momentum=momentum,
                    ns_steps=ns_steps,
                    adjust_lr_fn=adjust_lr_fn,
                    distributed=distributed,
                )
            )
        if adam_groups:
            opts.append(
                AdamW(
                    adam_groups,
                    lr=adamw_lr,
                    betas=adamw_betas,
                    eps=adamw_eps,
                    weight_decay=weight_decay,
                    distributed=distributed,
                )
            )
        super().__init__(opts)
