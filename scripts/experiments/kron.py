"""PSGD-Kron from heavyball, as the lineup runs it (``configs/optimizer/kron.yaml``).

heavyball compiles its step with ``torch.compile`` (mode max-autotune); on a CPU that compile
cost ~70 s before a 6-step run of the tiny model took its first step (measured here,
2026-12-04), far more than the whole run, so on CPU parameters its kernels run eagerly. The
optimizer itself is heavyball's, unchanged.
"""

from __future__ import annotations

from typing import Any

import heavyball  # here, so that a missing library is named when the config is checked


def PSGDKron(params: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands for the class
    """``heavyball.PSGDKron(params, **kwargs)``, eager on CPU (see the module doc)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if all(t.device.type == "cpu" for t in tensors):
        heavyball.utils.compile_mode = None
    return heavyball.PSGDKron(groups, **kwargs)
