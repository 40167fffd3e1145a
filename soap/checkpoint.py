"""Optimizer state keyed by parameter name, for sharded checkpoints.

``torch.optim``'s ``state_dict()`` numbers parameters by position and holds whatever this rank
has. In the distributed mode each rank holds the state of the parameters it owns, so a
checkpoint written by several ranks must say *which parameter* every tensor belongs to, and a
different number of ranks must be able to read it back. :func:`named_state` gives this rank's
state as a flat mapping ``"<parameter name>/<state key>" -> value`` plus ``"param_groups"``
(the hyperparameters); :func:`load_named_state` puts such a mapping back. The keys are the
same whatever the number of ranks, so ``torch.distributed.checkpoint`` writes every rank's own
part (no gather) and reshards on load (``scripts/trainer/state.py`` does this; so can user
code). Works for any optimizer with torch's state layout, :class:`soap.ChainedOptimizer`, and
``DTensor`` state (FSDP2 + torch optimizers).

For ``torch.distributed.checkpoint`` directly: :func:`dcp_state` (what to save),
:func:`dcp_template` (what to load into, shapes read from the checkpoint's metadata) and
:func:`load_dcp_state`; :func:`save` and :func:`load` do the whole round trip for an optimizer
alone::

    soap.checkpoint.save(opt, model, "ckpt/step-1000")  # every rank calls it
    soap.checkpoint.load(opt, model, "ckpt/step-1000")  # any number of ranks
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .distributed import is_dtensor

GROUPS = "param_groups"
EXTRA = "#optimizer"  # "#optimizer<i>/extra": leaf i's state_dict() entries beyond torch's two
PICKLED = "#pickled"
WHOLE = "#state"  # "name/#state": a parameter's whole state in a layout other than torch's  # suffix of a state entry stored as one opaque blob (see dcp_state)
_PLAIN = (Tensor, int, float, bool, str, type(None))


def _leaves(opt: Optimizer) -> list[Optimizer]:
    inner = getattr(opt, "optimizers", None)  # ChainedOptimizer
    if inner is not None:
        return [leaf for o in inner for leaf in _leaves(o)]
    wrapped = getattr(opt, "optimizer", None)  # accelerate's AcceleratedOptimizer
    if isinstance(wrapped, Optimizer) and wrapped is not opt:
        return _leaves(wrapped)
    return [opt]


def param_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` (tied parameters under their first name, as in
    ``named_parameters()``)."""
    return {id(p): n for n, p in model.named_parameters()}


def owned(opt: Optimizer) -> list[Tensor]:
    """The parameters whose state this rank holds (all of them unless distributed)."""
    out = []
    for leaf in _leaves(opt):
        own = getattr(leaf, "owned_parameters", None)
        out += own() if callable(own) else [p for g in leaf.param_groups for p in g["params"]]
    return out


def named_state(opt: Optimizer, names: Mapping[int, str]) -> dict[str, Any]:
    """This rank's optimizer state: ``{"<name>/<key>": value, "param_groups": [...]}``."""
    flat: dict[str, Any] = {}
    groups = []
    for leaf in _leaves(opt):
        for g in leaf.param_groups:
            groups.append(
                {k: v for k, v in g.items() if k != "params"}
                | {"param_names": [names[id(p)] for p in g["params"]]}
            )
        for p, st in leaf.state.items():
            if not all(isinstance(k, str) and isinstance(v, _PLAIN) for k, v in st.items()):
                # Another layout (heavyball: {0: {nested dicts, sets, lists}}): kept whole,
                # keys and all (an int key written as "name/0" would come back a string).
                flat[f"{names[id(p)]}/{WHOLE}"] = st
                continue
            for k, v in st.items():
                # Views into stacked buffers are cloned so that a writer stores the row only.
                flat[f"{names[id(p)]}/{k}"] = v.clone() if isinstance(v, Tensor) else v
    for i, leaf in enumerate(_leaves(opt)):
        if type(leaf).state_dict is not Optimizer.state_dict:  # may add top-level entries
            extra = {k: v for k, v in leaf.state_dict().items() if k not in ("state", GROUPS)}
            if extra:  # heavyball's schedule counters, say
                flat[f"{EXTRA}{i}/extra"] = extra
    flat[GROUPS] = groups
    return flat


def load_named_state(opt: Optimizer, flat: Mapping[str, Any], names: Mapping[int, str]) -> None:
    """Load what :func:`named_state` wrote (any number of ranks) into ``opt``; entries for
    parameters this rank does not hold are ignored, hyperparameters come from the file."""
    saved_groups = list(flat[GROUPS])
    per_param: dict[str, dict[str, Any]] = {}
    for key, v in flat.items():
        if key == GROUPS:
            continue
        name, _, k = key.rpartition("/")
        if k == WHOLE:
            per_param.setdefault(name, {}).update(v)
        else:
            per_param.setdefault(name, {})[k] = v
    i = 0
    for li, leaf in enumerate(_leaves(opt)):
        state, groups, idx = {}, [], 0
        for g in leaf.param_groups:
            saved = saved_groups[i]
            i += 1
            mine = [names[id(p)] for p in g["params"]]
            if saved["param_names"] != mine:
                raise ValueError(
                    "optimizer checkpoint does not match this optimizer's parameter groups "
                    f"(group {i - 1}: {len(saved['param_names'])} saved vs {len(mine)} "
                    "parameters): resume with the same model and optimizer"
                )
            new = {**saved, "params": list(range(idx, idx + len(mine)))}
            if "param_names" not in g:  # only groups that had names get them back
                new.pop("param_names")
            groups.append(new)
            for name in mine:
                if name in per_param:
                    state[idx] = per_param[name]
                idx += 1
        extra = per_param.get(f"{EXTRA}{li}", {}).get("extra", {})
        leaf.load_state_dict({"state": state, GROUPS: groups, **extra})
    if i != len(saved_groups):
        raise ValueError(
            f"optimizer checkpoint has {len(saved_groups)} parameter groups, this optimizer "
            f"{i}: resume with the same optimizer configuration"
        )


def needed_names(opt: Optimizer, names: Mapping[int, str]) -> Iterable[str]:
    """Names of the parameters whose state this rank must read on resume."""
    return [names[id(p)] for p in owned(opt)]


def dcp_state(opt: Optimizer, model: nn.Module) -> dict[str, Any]:
    """:func:`named_state` ready for ``dcp.save``: the hyperparameters (a list of dicts) go as
    one opaque entry rather than being flattened."""
    flat = named_state(opt, param_names(model))
    flat[GROUPS] = io.BytesIO(pickle.dumps(flat[GROUPS]))
    # State in another layout than torch's (heavyball keeps nested dicts, sets and lists of
    # tensors per parameter): one opaque blob per entry. DCP would flatten such containers
    # into keys that can collide ("duplicated flatten key"); a blob cannot be resharded, which
    # is fine for replicated optimizers (the trainer refuses such optimizers under FSDP2).
    for key in [k for k, v in flat.items() if k != GROUPS and not isinstance(v, _PLAIN)]:
        buf = io.BytesIO()
        torch.save(flat.pop(key), buf)
        flat[key + PICKLED] = buf
    return flat


def dcp_template(
    opt: Optimizer, model: nn.Module, metadata: Any, prefix: str = "optimizer"
) -> dict[str, Any]:
    """Tensors for ``dcp.load`` to read this rank's optimizer entries into (shapes from the
    checkpoint's ``metadata``, as saved under ``prefix``): the optimizer's state is lazy, so a
    fresh optimizer has nothing to load into. A ``DTensor`` parameter's state of the full
    shape is read as a ``DTensor`` laid out like the parameter (resharding on load) when a
    torch optimizer holds it; SOAP, Shampoo and Muon keep their owners' state as whole plain
    tensors (they step each matrix whole), so theirs is read plain."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    names = param_names(model)
    by_name = dict(model.named_parameters())
    needed = set(needed_names(opt, names))
    whole = {
        names[id(p)]
        for leaf in _leaves(opt)
        if hasattr(leaf, "owned_parameters")
        for g in leaf.param_groups
        for p in g["params"]
    }
    template: dict[str, Any] = {GROUPS: io.BytesIO()}
    head = f"{prefix}."
    for key, md in metadata.state_dict_metadata.items():
        if not key.startswith(head) or key == head + GROUPS:
            continue
        entry = key[len(head) :]
        pname = entry.rpartition("/")[0]
        if pname not in needed and not pname.startswith(EXTRA):
            continue
        if entry.endswith(PICKLED):
            template[entry] = io.BytesIO()
        elif isinstance(md, TensorStorageMetadata):
            p = by_name[pname]
            if is_dtensor(p) and pname not in whole and tuple(md.size) == tuple(p.shape):
                template[entry] = torch.zeros_like(p, dtype=md.properties.dtype)
            else:
                # On the CPU: loaded whole, then moved to the parameter's device by the optimizer.
                template[entry] = torch.empty(
                    tuple(md.size), dtype=md.properties.dtype, device="cpu"
                )
        else:
            template[entry] = None
    return template


def load_dcp_state(opt: Optimizer, model: nn.Module, loaded: dict[str, Any]) -> None:
    """Put a :func:`dcp_template` filled by ``dcp.load`` into ``opt``."""
    flat = dict(loaded)
    flat[GROUPS] = pickle.loads(flat[GROUPS].getvalue())
    for key in [k for k in flat if k.endswith(PICKLED)]:
        blob = flat.pop(key)
        flat[key[: -len(PICKLED)]] = torch.load(io.BytesIO(blob.getvalue()), weights_only=False)
    load_named_state(opt, flat, param_names(model))


def save(opt: Optimizer, model: nn.Module, checkpoint_id: str) -> None:
    """Write ``opt``'s state with ``torch.distributed.checkpoint`` (every rank calls this and
    writes its own part; no gather)."""
    import torch.distributed.checkpoint as dcp

    dcp.save({"optimizer": dcp_state(opt, model)}, checkpoint_id=checkpoint_id)


def load(opt: Optimizer, model: nn.Module, checkpoint_id: str) -> None:
    """Read what :func:`save` wrote, with any number of ranks, into ``opt``."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(checkpoint_id).read_metadata()
    states = {"optimizer": dcp_template(opt, model, metadata)}
    dcp.load(states, checkpoint_id=checkpoint_id)
    load_dcp_state(opt, model, states["optimizer"])
