"""Which parameters decay, and which Muon may take: decided by module type and by tying.

Given a module, every parameter is classified by the modules that hold it (one rule set for
every optimizer, so comparisons are like for like):

==========  ===========================================================  ========  =========
kind        held by                                                      decays    Muon
==========  ===========================================================  ========  =========
``head``    an ``nn.Linear`` that is the output projection               yes       no (AdamW)
            (``get_output_embeddings()``, or tied to an ``nn.Embedding``)
``matrix``  any other ``nn.Linear``/convolution weight                   yes       2-D only
``embed``   an ``nn.Embedding`` weight not shared with a ``Linear``      no [1]_   no (AdamW)
``norm``    a normalisation layer (class name containing ``Norm``)       no        no (AdamW)
``bias``    any module's ``bias``                                        no        no (AdamW)
==========  ===========================================================  ========  =========

.. [1] unless ``decay_embeddings=True`` (OLMo-2 practice is not to decay them).

So a tied input embedding / output projection (nanoGPT's ``transformer.wte.weight``) is the
output projection: it decays. ``rules`` (fnmatch patterns of parameter names mapped to
``"decay"`` or ``"no_decay"``) classify parameters the table does not cover and take
precedence over it; a parameter that neither covers raises ``ValueError`` naming it, so
nothing is grouped by accident.

Given ``named_parameters()`` instead of a module, there are no module types to read: matrices
(``ndim >= 2``) decay unless their name contains ``embed``/``wte``/``wpe``, and Muon takes
2-D matrices not named like an embedding or an output head. Pass the module when you can.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["ParamInfo", "classify", "param_groups"]

_EMBED_KEYS = ("embed", "wte", "wpe")
_HEAD_KEYS = ("lm_head", "output", "head")
_MATRIX_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DECAYING = ("head", "matrix", "decay")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    param: Tensor
    kind: str  # head | matrix | embed | norm | bias | decay | no_decay

    def decays(self, decay_embeddings: bool = False) -> bool:
        return self.kind in DECAYING or (self.kind == "embed" and decay_embeddings)

    @property
    def muon(self) -> bool:
        """A hidden matrix Muon is defined for (everything else runs AdamW)."""
        return self.kind == "matrix" and self.param.ndim == 2


def _is_norm(m: nn.Module) -> bool:
    return "norm" in type(m).__name__.lower()


def _is_matrix_module(m: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D is a linear layer with a transposed weight.
    return isinstance(m, _MATRIX_TYPES) or type(m).__name__ == "Conv1D"


def _output_weight(model: nn.Module) -> Tensor | None:
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            out = get()
        except (NotImplementedError, AttributeError):
            return None
        return getattr(out, "weight", None)
    return None


def _from_modules(model: nn.Module, rules: Mapping[str, str]) -> list[ParamInfo]:
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in model.modules():
        for attr, p in m.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((m, attr))
    out_w = _output_weight(model)
    infos = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = _rule(name, rules)
        if kind is None:
            held = holders.get(id(p), [])
            linear = [m for m, attr in held if attr == "weight" and _is_matrix_module(m)]
            embed = [m for m, attr in held if attr == "weight" and isinstance(m, nn.Embedding)]
            if any(attr == "bias" for _, attr in held):
                kind = "bias"
            elif linear and (embed or p is out_w):
                kind = "head"
            elif linear:
                kind = "matrix"
            elif embed:
                kind = "embed"
            elif any(_is_norm(m) for m, _ in held):
                kind = "norm"
            else:
                types = sorted({type(m).__name__ for m, _ in held}) or ["?"]
                raise ValueError(
                    f"cannot tell whether parameter {name!r} (shape {tuple(p.shape)}, held by "
                    f"{', '.join(types)}) should decay: pass rules={{{name!r}: 'decay' or "
                    "'no_decay'}} (fnmatch patterns)"
                )
        infos.append(ParamInfo(name, p, kind))
    return infos


def _rule(name: str, rules: Mapping[str, str]) -> str | None:
    for pattern, kind in rules.items():
        if fnmatch.fnmatchcase(name, pattern):
            if kind not in ("decay", "no_decay"):
                raise ValueError(f"rules[{pattern!r}]={kind!r}: use 'decay' or 'no_decay'")
            return kind
    return None


def _from_names(named: Iterable[tuple[str, Tensor]], rules: Mapping[str, str]) -> list[ParamInfo]:
    infos = []
    for name, p in named:
        if not p.requires_grad:
            continue
        kind = _rule(name, rules)
        if kind is None:
            if p.ndim < 2:
                kind = "no_decay"
            elif any(k in name for k in _EMBED_KEYS):
                kind = "embed"
            elif any(k in name for k in _HEAD_KEYS):
                kind = "head"
            else:
                kind = "matrix"
        infos.append(ParamInfo(name, p, kind))
    return infos


def classify(
    params: nn.Module | Iterable[tuple[str, Tensor]], rules: Mapping[str, str] | None = None
) -> list[ParamInfo]:
    """Every trainable parameter with its kind (rules in the module docstring)."""
    if isinstance(params, nn.Module):
        return _from_modules(params, rules or {})
    return _from_names(params, rules or {})


def param_groups(
    params: nn.Module | Iterable[tuple[str, Tensor]],
    weight_decay: float | None = None,
    decay_embeddings: bool = False,
    rules: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A decayed and a non-decayed group (rules in the module docstring).

    The decayed group carries no ``weight_decay`` key unless one is given, so the optimizer's
    own default applies; the other group sets ``weight_decay=0``. Names are kept in
    ``param_names`` (torch >= 2.6 reads them; SOAP/Shampoo use them in error messages).
    """
    infos = classify(params, rules)
    decay = [i for i in infos if i.decays(decay_embeddings)]
    no_decay = [i for i in infos if not i.decays(decay_embeddings)]
    groups = []
    if decay:
        g: dict[str, Any] = {
            "params": [i.param for i in decay],
            "param_names": [i.name for i in decay],
        }
        if weight_decay is not None:
            g["weight_decay"] = weight_decay
        groups.append(g)
    if no_decay:
        groups.append(
            {
                "params": [i.param for i in no_decay],
                "param_names": [i.name for i in no_decay],
                "weight_decay": 0.0,
            }
        )
    return groups
