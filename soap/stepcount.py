"""The step count: a CPU tensor per parameter, as torch's own optimizers keep it.

Why a tensor and not a Python int: dynamo specialises a compiled graph on every int it reads
through a global, so with PyTorch's "compiling the optimizer" recipe (``@torch.compile def
step(): opt.step()``, the optimizer a global) an int count recompiled the step every step until
dynamo's limit. A tensor is an input of the graph instead. Eagerly its value is read on the host
(a CPU tensor: no device synchronisation) and the maths sees a Python int, as before; under
``torch.compile`` the tensor itself flows into the bias corrections, and the periodic refreshes
run as custom operators that read it at run time (:mod:`soap.ops`).

Cohorts: the tensors stacked in one bucket must be at the same step, since one count serves the
bucket. Reading every count on the host to sort them would break a compiled graph, so instead
the optimizer tracks which parameters stepped together: whenever the bucket plan is rebuilt
after some steps, the parameters of the old plan moved on together and get a new cohort number
(one per old cohort), the others keep theirs; parameters loaded from a state dict start in the
cohort of their loaded count. Equal cohort implies equal count.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def new_count() -> Tensor:
    """A fresh count: a 0-dim fp32 CPU tensor, torch's format for ``state['step']``."""
    return torch.zeros((), dtype=torch.float32, device="cpu")


def as_count(value: object) -> Tensor:
    """A count from a loaded state dict: a tensor of any device/dtype, or an int (written by
    an older soap-bench or by the reference SOAP)."""
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float32, copy=True).reshape(())
    return torch.tensor(float(value), dtype=torch.float32, device="cpu")  # type: ignore[arg-type]


def advance(counts: list[Tensor]) -> int | Tensor:
    """Add one to each count of a bucket (all equal) and return the new value: a host int
    eagerly, the first count tensor under ``torch.compile`` (never read on the host there)."""
    torch._foreach_add_(counts, 1.0)
    if torch.compiler.is_compiling():
        return counts[0]
    return int(counts[0])


class Cohorts:
    """Which parameters are at the same step, known on the host without reading a count.

    Everything lives in one dict: torch.compile (2.13) drops attribute assignments made
    inside a compiled ``Optimizer.step`` but keeps dict updates."""

    def __init__(self) -> None:
        self._d: dict[str, object] = {"of": {}, "next": 0, "stepped": False}

    def of(self, p: Tensor) -> object:
        return self._d["of"].get(id(p))  # type: ignore[attr-defined]

    def stepped(self) -> None:
        """The current plan stepped (called every step; read only when the plan changes)."""
        self._d["stepped"] = True

    def moved_on(self, params: Iterable[Tensor]) -> None:
        """``params`` (the old plan's) stepped together since the last rebuild, if at all."""
        d = self._d
        if not d["stepped"]:
            return
        of: dict[int, object] = d["of"]  # type: ignore[assignment]
        fresh: dict[object, int] = {}
        for p in params:
            old = of.get(id(p))
            if old not in fresh:
                d["next"] = fresh[old] = d["next"] + 1  # type: ignore[operator]
            of[id(p)] = fresh[old]
        d["stepped"] = False

    def loaded(self, counts: dict[int, Tensor]) -> None:
        """Counts were just loaded (``id(parameter) -> count``): cohorts from their values."""
        self._d["of"] = {i: ("loaded", int(c)) for i, c in counts.items()}
        self._d["stepped"] = False
