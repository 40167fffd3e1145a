"""Typed configuration: the schema of every config group, registered in Hydra's ConfigStore.

``configs/**/*.yaml`` stay the user-facing presets; each group is validated against a
dataclass here (data and model schemas live with their code: :class:`data.config.DataConfig`,
:class:`models.ModelConfig`), so a misspelt key or a wrong type fails at composition, and
every script gets its config through Hydra (``hydra.main`` for the trainer, the compose API
everywhere else: :func:`compose`). Defaults live here (or in those two classes), once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from data.config import DataConfig
from models import ModelConfig
from soap import SOAP, MuonAdamW, Shampoo

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER_BETAS = [0.95, 0.95]  # the SOAP paper's betas, for its AdamW baseline too


@dataclass
class RegimeConfig:
    name: str = "cpu"
    seq_len: int = 128
    global_batch: int = 16  # sequences per optimizer step = micro_batch x grad_accum x world
    micro_batch: int = 16
    precondition_frequency: int = 10
    max_precond_dim: int = 1024  # larger (vocabulary) dimensions use the identity
    # (beta1, beta2) shared by AdamW, SOAP and Shampoo, as the paper shares one pair between
    # them (configs/optimizer/{adamw,soap,shampoo}.yaml read it); an optimizer.betas override
    # still wins. The CPU regime's differ (configs/regime/cpu_small.yaml, measured).
    betas: list[float] = field(default_factory=lambda: list(PAPER_BETAS))


@dataclass
class TrainConfig:
    max_steps: int | None = None  # iterations; None: from the token budget
    tokens_per_param: float = 20.0  # budget = tokens_per_param x non-embedding parameters
    fraction: float = 1.0  # shortens the run AND its whole schedule (paper: 0.5 ... 1.0)
    eval_every: int = 50
    eval_sequences: int = 256  # the fixed validation set (first N validation sequences)
    eval_batch_size: int = 32
    target_loss: float | None = None  # eval loss to reach
    stop_at_target: bool = False
    checkpoint_every: int = 200
    keep_checkpoints: int = 2  # newest complete checkpoints kept (an unreadable one falls back)
    clock_skip_steps: int = 2  # first steps (compile / warm-up) timed as warm-up
    grad_clip: float | None = 1.0  # max global grad norm; None or 0 disables
    z_loss: float = 1.0e-4  # OLMo z-loss coefficient (paper setup); 0 disables
    loss_chunk_tokens: int | None = None  # None: ~128 MB of logits (CPU: 64-256 tokens)
    max_bad_steps: int = 0  # non-finite losses/gradients tolerated (skipped) before stopping
    compile: str = "auto"  # auto: compile the decoder layers on CUDA; true | false
    fsdp: bool = False  # FSDP2 parameter sharding over every rank (DDP otherwise)
    # HSDP: FSDP2 on a replicate x shard mesh (torchtitan's names); dp_replicate * dp_shard =
    # the number of processes; dp_shard=-1: the processes left. dp_replicate=1 + fsdp: FSDP2.
    dp_replicate: int = 1
    dp_shard: int = -1
    dist_timeout_s: int = 1800  # the longest any collective may wait (process group timeout)
    mixed_precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; no | bf16
    log_every: int = 1  # metrics lines (and non-TTY progress lines) every N iterations
    progress: bool = True


@dataclass
class ProtocolTag:
    """Which protocol preset and phase produced a run (:mod:`scripts.experiments.protocol`);
    empty for a run started by hand."""

    preset: str | None = None
    phase: str | None = None  # sweep | extend | tuned | seeds | fractions | tune | robustness


@dataclass
class ScheduleConfig:
    warmup_fraction: float = 0.1  # linear warmup over this fraction of the run
    final_lr_fraction: float = 0.1  # cosine decays to this fraction of the peak LR


@dataclass
class WandbConfig:
    mode: str = "disabled"  # disabled | offline | online
    project: str = "soap-bench"
    entity: str | None = None


# ---- optimizers: constructor calls (`_target_` + `_partial_`), one schema each ------------
def own(fn: Callable[..., Any], name: str) -> Any:
    """A schema field whose default is ``fn``'s own default for ``name``: one home per default
    (the optimizer's signature); the schema only types it and makes it overridable."""
    d = inspect.signature(fn).parameters[name].default
    if isinstance(d, (tuple, list)):
        return field(default_factory=lambda: list(d))
    return field(default=d)


@dataclass
class _Call:
    _target_: str = MISSING
    _partial_: bool = True
    _convert_: str = "all"


# The harness's own choices, where it departs from an optimizer's default (the rest is `own`):
HARNESS_LR = 3.0e-3  # the centre of every LR sweep's grid


@dataclass
class AdamWConfig(_Call):
    _target_: str = "torch.optim.AdamW"
    lr: float = HARNESS_LR
    betas: list[float] = field(default_factory=lambda: list(PAPER_BETAS))
    eps: float = own(torch.optim.AdamW, "eps")
    weight_decay: float = own(torch.optim.AdamW, "weight_decay")


@dataclass
class SOAPConfig(_Call):
    _target_: str = "soap.SOAP"
    lr: float = own(SOAP, "lr")
    betas: list[float] = own(SOAP, "betas")
    shampoo_beta: float = own(SOAP, "shampoo_beta")
    eps: float = own(SOAP, "eps")
    weight_decay: float = own(SOAP, "weight_decay")
    precondition_frequency: int = own(SOAP, "precondition_frequency")
    max_precond_dim: int = own(SOAP, "max_precond_dim")
    merge_dims: bool = own(SOAP, "merge_dims")
    precondition_1d: bool = own(SOAP, "precondition_1d")
    normalize_grads: bool = own(SOAP, "normalize_grads")
    correct_bias: bool = own(SOAP, "correct_bias")
    one_sided: bool = own(SOAP, "one_sided")
    factorized: bool = own(SOAP, "factorized")
    nonfinite_grad: str = own(SOAP, "nonfinite_grad")
    distributed: str = own(SOAP, "distributed")


@dataclass
class ShampooConfig(_Call):
    _target_: str = "soap.Shampoo"
    lr: float = own(Shampoo, "lr")
    betas: list[float] = own(Shampoo, "betas")
    epsilon: float = own(Shampoo, "epsilon")
    weight_decay: float = own(Shampoo, "weight_decay")
    precondition_frequency: int = own(Shampoo, "precondition_frequency")
    start_preconditioning_step: int | None = own(Shampoo, "start_preconditioning_step")
    root: float = own(Shampoo, "root")
    max_preconditioner_dim: int = own(Shampoo, "max_preconditioner_dim")
    blocking: bool = own(Shampoo, "blocking")
    block_size: int = own(Shampoo, "block_size")
    precondition_1d: bool = own(Shampoo, "precondition_1d")
    graft_eps: float = own(Shampoo, "graft_eps")
    nonfinite_grad: str = own(Shampoo, "nonfinite_grad")
    distributed: str = own(Shampoo, "distributed")


@dataclass
class MuonConfig(_Call):
    _target_: str = "soap.MuonAdamW"
    lr: float = own(MuonAdamW, "lr")  # one scale for both parts (match_rms_adamw)
    adamw_lr: float = own(MuonAdamW, "adamw_lr")
    adamw_betas: list[float] = own(MuonAdamW, "adamw_betas")
    weight_decay: float = own(MuonAdamW, "weight_decay")
    momentum: float = own(MuonAdamW, "momentum")
    adjust_lr_fn: str | None = own(MuonAdamW, "adjust_lr_fn")
    distributed: str = own(MuonAdamW, "distributed")


@dataclass
class RunConfig:
    """The root: what ``configs/train.yaml`` composes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: Any = MISSING  # one of the schemas above, or any `_target_` call
    optimizer_name: str = MISSING
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    protocol: ProtocolTag = field(default_factory=ProtocolTag)
    experiment_name: str = "default"
    seed: int = 0
    # The training data's order (which sequences each step sees, and at under one pass which
    # of them at all); None: ``seed``, which then sets the init and the order together.
    data_seed: int | None = None
    run_dir: str = MISSING
    # auto: continue the latest checkpoint of the same configuration; never: refuse an existing
    # run; force: continue even if the configuration differs (recorded in summary.json)
    resume: str = "auto"
    cache_dir: str = ".cache/soap-bench"


def register() -> None:
    """Put the schemas where ``configs/`` refers to them (idempotent)."""
    cs = ConfigStore.instance()
    # The root types model/regime/data/train/schedule/wandb; each optimizer file names its own.
    cs.store(name="run_schema", node=RunConfig)
    for name, node in (
        ("adamw", AdamWConfig),
        ("soap", SOAPConfig),
        ("shampoo", ShampooConfig),
        ("muon", MuonConfig),
    ):
        cs.store(group="schema/optimizer", name=name, node=node)


register()


OPTIMIZER_SCHEMAS = (AdamWConfig, SOAPConfig, ShampooConfig, MuonConfig)


def unknown_keys(cfg: Any) -> list[str]:
    """Keys that no schema declares, e.g. from a ``+key=value`` override (Hydra adds those
    even to typed configs). The optimizer's keys are checked against its schema when its
    ``_target_`` is one of ours; any other ``_target_`` (your own optimizer class) takes
    any keyword: that is the documented way to pass one (``+optimizer.my_arg=1``)."""
    from omegaconf import DictConfig, OmegaConf

    out: list[str] = []

    def walk(node: dict, schema: Any, path: str) -> None:
        for k, v in node.items():
            key = f"{path}{k}"
            if k not in schema.keys():  # noqa: SIM118 (`in` is False for MISSING values)
                out.append(key)
            elif (
                isinstance(v, dict)
                and not OmegaConf.is_missing(schema, k)
                and isinstance(schema.get(k), DictConfig)
                and OmegaConf.get_type(schema, k) not in (dict, None)
            ):
                walk(v, schema[k], f"{key}.")

    # Keys only, never values: an interpolation (run_dir=runs/${optimizer.lr}, ${hydra:...},
    # ${oc.env:...}) is left unresolved, so it cannot fail here whatever it points at.
    raw = OmegaConf.to_container(cfg, resolve=False)
    root = OmegaConf.structured(RunConfig)
    walk({k: v for k, v in raw.items() if k not in ("optimizer", "hydra")}, root, "")
    target = raw.get("optimizer", {}).get("_target_") if "optimizer" in raw else None
    for schema in OPTIMIZER_SCHEMAS:
        if target == schema._target_:
            walk(raw["optimizer"], OmegaConf.structured(schema), "optimizer.")
    return out


def error_line(e: BaseException) -> str:
    """One line from Hydra/OmegaConf's multi-line errors: what failed and why."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    head = lines[0] if lines else type(e).__name__
    detail = ""
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        detail = str(cause).strip().splitlines()[0]
    elif len(lines) > 1 and "raised while composing" in head:
        head, detail = head.split(":")[0], lines[1]
    msg = f"{head}: {detail}" if detail and detail not in head else head
    text = str(e)
    if "Available options in" in text:  # an unknown preset: say which exist
        opts = text.split("Available options in", 1)[1].split("Config search path")[0]
        msg += f"; available: {', '.join(opts.split()[1:])}"
    return f"{msg} (fix the override or the config file)"


def compose(overrides: list[str] | None = None, config_name: str = "train") -> Any:
    """The config the trainer would see for these command-line overrides (no ``hydra:``
    resolver: pass ``run_dir=`` when it matters)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
