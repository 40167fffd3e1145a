"""PSGD-Kron from heavyball, as the lineup runs it (``configs/optimizer/kron.yaml``).

heavyball compiles its step with ``torch.compile`` (mode max-autotune); on a CPU that compile
cost ~70 s before a 6-step run of the tiny model took its first step (measured here,
2026-12-04), far more than the whole run, so on CPU parameters its kernels run eagerly.

Its update is heavyball's, unchanged; one thing is added: a resume that keeps its state's
dtypes. heavyball keeps a running lower bound of each factor's norm in float64, and
``torch.optim.Optimizer.load_state_dict`` casts every floating state tensor to its
parameter's dtype, so a resumed run's bound lost its last digits (53.69606106878609 came back
53.69606018066406) and its weights drifted from the uninterrupted run's by 1 ulp.
"""

from __future__ import annotations

from typing import Any

import heavyball  # here, so that a missing library is named when the config is checked
import torch


def _saved_dtypes(loaded: Any, saved: Any) -> Any:
    """``loaded`` (state after torch's cast), with each floating tensor whose saved dtype
    differs replaced by the saved tensor, on the loaded tensor's device."""
    if isinstance(loaded, torch.Tensor) and isinstance(saved, torch.Tensor):
        if saved.is_floating_point() and saved.dtype != loaded.dtype:
            return saved.to(device=loaded.device, copy=True)
        return loaded
    if isinstance(loaded, dict) and isinstance(saved, dict):
        return {k: _saved_dtypes(v, saved[k]) if k in saved else v for k, v in loaded.items()}
    lists = isinstance(loaded, list | tuple) and isinstance(saved, list | tuple)
    if lists and len(loaded) == len(saved):
        return type(loaded)(_saved_dtypes(a, b) for a, b in zip(loaded, saved, strict=True))
    return loaded


class _PSGDKron(heavyball.PSGDKron):
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for p, i in zip(params, ids, strict=True):
            if p in self.state and i in state_dict["state"]:
                self.state[p] = _saved_dtypes(self.state[p], state_dict["state"][i])


def PSGDKron(params: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands for the class
    """``heavyball.PSGDKron(params, **kwargs)``, eager on CPU, resuming with its state's own
    dtypes (see the module doc)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if all(t.device.type == "cpu" for t in tensors):
        heavyball.utils.compile_mode = None
    return _PSGDKron(groups, **kwargs)
