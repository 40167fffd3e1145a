"""The training loss: next-token cross-entropy plus OLMo's z-loss, without ever holding the
fp32 logits of a whole micro-batch.

For hidden states ``H`` (``T x d``, the decoder's output for every position but the last),
output projection ``W`` (``V x d``) and targets ``y`` (the next tokens), with logits
``Z = H W^T`` and ``lse_t = logsumexp(Z_t)``:

.. math::

    \\mathrm{CE} = \\frac1T \\sum_t (\\mathrm{lse}_t - Z_{t y_t}), \\qquad
    \\mathcal{L} = \\mathrm{CE} + z \\frac1T \\sum_t \\mathrm{lse}_t^2, \\qquad
    \\frac{\\partial \\mathcal{L}}{\\partial Z_t} =
        \\frac{(1 + 2 z\\,\\mathrm{lse}_t)\\,\\mathrm{softmax}(Z_t) - e_{y_t}}{T}.

:class:`ChunkedLinearCrossEntropy` walks over ``chunk`` tokens at a time: it forms that chunk's
logits (in the autocast dtype, then fp32 for the softmax, as ``logits.float()`` would),
accumulates the loss, and - when a gradient is needed - turns ``dL/dZ`` straight into
``dL/dH = dZ W`` and ``dL/dW += dZ^T H``. Peak memory is one chunk of logits instead of
``T x V`` fp32 (1.1 GB for 8 x 1024 tokens of a 32100 vocabulary), at the cost of doing the
output projection's backward during the forward. The z-loss is OLMo's (Zhao et al. 2024 setup,
coefficient 1e-4 in the paper's runs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_CHUNK_ELEMENTS = 1 << 25  # logits per chunk on an accelerator (~128 MB in fp32)
# On a CPU small chunks are ~2x faster: a fresh 100 MB buffer each step is served by mmap and
# every page faults in again, while a few MB stay in the heap and near the caches. Measured on
# a 2-core Xeon (loss forward+backward): 48 x 128 tokens of a 4096 vocabulary 305 -> 133 ms at
# 256 tokens a chunk; 4 x 256 of 32100: best at 128-256 tokens, slower at 64 and at 32.
CPU_CHUNK_ELEMENTS = 1 << 22  # at most ~16 MB of fp32 logits ...
CPU_CHUNK_TOKENS = (64, 256)  # ... and between 64 and 256 tokens


def chunk_tokens(vocab_size: int, chunk: int | None, device: str = "cuda") -> int:
    """Tokens per chunk: ``chunk`` if given, else ~128 MB of fp32 logits on an accelerator and
    on a CPU ``CPU_CHUNK_ELEMENTS // vocab_size`` kept within ``CPU_CHUNK_TOKENS``."""
    if chunk is not None and chunk > 0:
        return int(chunk)
    if device == "cpu":
        low, high = CPU_CHUNK_TOKENS
        return min(high, max(low, CPU_CHUNK_ELEMENTS // vocab_size))
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab_size)


def _chunk_loss(h: Tensor, w: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One chunk's CE per token, lse, ``exp(logits - max)`` (written over the fp32 logits) and
    its row sums ``s`` (so ``softmax = exp / s``); ``h`` and ``w`` in the products' dtype. One exp serves
    the loss and its gradient: five passes over the chunk's logits instead of eight."""
    logits = (h @ w.mT).float()
    target = logits.gather(-1, y[:, None]).squeeze(-1)
    m = logits.amax(dim=-1, keepdim=True)
    e = logits.sub_(m).exp_()
    s = e.sum(dim=-1, keepdim=True)
    lse = (m + s.log()).squeeze(-1)
    return lse - target, lse, e, s


def _fused(
    h: Tensor, w: Tensor, y: Tensor, z_loss: float, chunk: int, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(CE, CE + z-loss, dL/dh, dL/dw)``, ``chunk`` tokens at a time; the gradients are
    ``None`` unless ``need_grad`` (evaluation skips two of the three products)."""
    n = h.shape[0]
    # The products run in autocast's dtype when autocast is on (bf16, as the output
    # projection's nn.Linear would: the decoder's hidden states are fp32, from its fp32
    # residual stream and final norm), else in the hidden states' dtype; the softmax and the
    # accumulations in fp32. Autocast itself is off inside, so nothing is cast twice.
    dev = h.device.type
    cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    with torch.autocast(device_type=dev, enabled=False):
        wc = w.to(cdt)
        ce_sum = h.new_zeros((), dtype=torch.float32)
        z_sum = h.new_zeros((), dtype=torch.float32)
        dh = torch.empty_like(h) if need_grad else None
        dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_grad else None
        for s in range(0, n, chunk):
            hc, yc = h[s : s + chunk].to(cdt), y[s : s + chunk]
            ce, lse, e, rows = _chunk_loss(hc, wc, yc)
            ce_sum += ce.sum()
            if z_loss:
                z_sum += lse.square().sum()
            if dh is None or dw is None:
                continue
            # dL/dZ = ((1 + 2 z lse) softmax - onehot(y)) / n, softmax = e / rows
            grad = e.mul_((1.0 + 2.0 * z_loss * lse[:, None]) / (rows * n))
            grad.scatter_add_(-1, yc[:, None], grad.new_full((hc.shape[0], 1), -1.0 / n))
            grad = grad.to(cdt)
            dh[s : s + chunk] = grad @ wc  # cast to h's dtype on the copy
            dw += grad.mT @ hc
    ce = ce_sum / n
    return ce, ce + z_loss * z_sum / n, dh, None if dw is None else dw.to(w.dtype)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``(CE, CE + z-loss)`` of ``h @ w^T`` against ``y``, computed ``chunk`` tokens at a time.

    The first output is for logging (no gradient); gradients flow through the second.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, w: Tensor, y: Tensor, z_loss: float, chunk: int
    ) -> tuple[Tensor, Tensor]:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        ce, total, dh, dw = _fused(h, w, y, z_loss, chunk, need_grad=need_grad)
        ctx.mark_non_differentiable(ce)
        if need_grad:
            ctx.save_for_backward(dh, dw)
        return ce, total

    @staticmethod
    def backward(ctx: Any, _grad_ce: Tensor, grad_total: Tensor) -> tuple:  # type: ignore[override]
        dh, dw = ctx.saved_tensors
        return dh * grad_total.to(dh.dtype), dw * grad_total.to(dw.dtype), None, None, None


def lm_loss(
    hidden: Tensor, weight: Tensor, ids: Tensor, z_loss: float, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy (mean over tokens) and the total loss with OLMo's z-loss
    ``z * mean(logsumexp(logits)^2)``, from the decoder's hidden states ``(B, S, d)``."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = ids[:, 1:].reshape(-1)
    chunk = chunk_tokens(weight.shape[0], chunk, h.device.type)
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        # Evaluation: an autograd Function still sees needs_input_grad under no_grad, and
        # would form the gradient (2/3 of the loss's work) only to drop it.
        ce, total, _, _ = _fused(h, weight, y, float(z_loss), chunk, need_grad=False)
        return ce, total
    return ChunkedLinearCrossEntropy.apply(h, weight, y, float(z_loss), chunk)


def lm_loss_from_logits(logits: Tensor, ids: Tensor, z_loss: float) -> tuple[Tensor, Tensor]:
    """The same loss from full logits (the straightforward formula; tests compare to it)."""
    logits = logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        return ce, ce + z_loss * lse.square().mean()
    return ce, ce


class CausalLMWithLoss(nn.Module):
    """A ``transformers`` causal LM whose forward returns ``(CE, CE + z-loss)`` through
    :func:`lm_loss` (the decoder runs as usual; only the output projection is fused with the
    loss). Data-parallel wrappers (DDP, FSDP2) wrap this module, so the output projection's
    weight is gathered by the root's forward as usual."""

    def __init__(self, lm: nn.Module, z_loss: float = 0.0, chunk: int | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.z_loss = float(z_loss)
        self.chunk = chunk

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.lm.model(input_ids=input_ids).last_hidden_state
        return lm_loss(hidden, self.lm.lm_head.weight, input_ids, self.z_loss, self.chunk)

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.lm.model.layers
