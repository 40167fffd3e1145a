"""soap: SOAP and Shampoo optimizers (Vyas et al. 2024, arXiv 2409.11321) for PyTorch.

``from soap import SOAP, Shampoo`` gives drop-in ``torch.optim.Optimizer`` classes;
``build_optimizer`` splits parameter groups (by module type and tying, :mod:`soap.grouping`)
and builds any of adamw / soap / shampoo / muon or an optimizer given by import path. This
package imports torch alone.
"""

from .factory import build_optimizer, optimizer_state_bytes, resolve_optimizer_class
from .grouping import classify, param_groups
from .hybrid import ChainedOptimizer, MuonAdamW
from .linalg import full_fp32
from .muon import Muon
from .nonfinite import NonFiniteGradientError
from .shampoo import Shampoo
from .soap import SOAP

__all__ = [
    "SOAP",
    "Shampoo",
    "Muon",
    "MuonAdamW",
    "ChainedOptimizer",
    "NonFiniteGradientError",
    "build_optimizer",
    "classify",
    "full_fp32",
    "optimizer_state_bytes",
    "param_groups",
    "resolve_optimizer_class",
]
__version__ = "0.1.0"
