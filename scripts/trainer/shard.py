"""FSDP2 and HSDP with torch's ``fully_shard``, applied by the trainer itself (as torchtitan
does), on CPU (gloo) and GPU alike.

Why not Accelerate's FSDP plugin: Accelerate turns it on for GPU-like devices only; on CPU
processes it silently falls back to DDP (plain parameters), so ``train.fsdp=true`` tested
nothing sharded here. Sharding the model before the Accelerator sees it makes the same code
run on both, and makes the CPU tests exercise what the GPUs run.

The data-parallel mesh is ``(dp_replicate, dp_shard)`` (torchtitan's names): FSDP2 when
``dp_replicate`` is 1 (a 1-D mesh), HSDP otherwise (``fully_shard`` on the 2-D mesh:
parameters ``(Replicate(), Shard(0))``, gradients reduce-scattered within a replica and
all-reduced across replicas). One FSDP unit per decoder layer, then the root (embeddings,
final norm, output projection). Parameters stay fp32; bf16 compute comes from autocast, as in
the DDP path, so the two differ only in where gradients are summed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def shard_model(model: torch.nn.Module, replicas: int, shards: int, device: torch.device) -> Any:
    """``model`` sharded in place over a ``replicas x shards`` mesh; returns the mesh."""
    if replicas > 1:
        mesh = init_device_mesh(
            device.type, (replicas, shards), mesh_dim_names=("dp_replicate", "dp_shard")
        )
    else:
        mesh = init_device_mesh(device.type, (shards,), mesh_dim_names=("dp_shard",))
    for layer in model.decoder_layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return mesh


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> bool:
    """FSDP2 modules reduce gradients only when ``sync`` (the last micro-batch of a step);
    returns whether ``model`` is one (DDP models use ``Accelerator.no_sync`` instead)."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(sync)
    return setter is not None
