"""Robust batched linear algebra for the preconditioners.

All routines take stacked symmetric matrices ``(B, d, d)`` and run in fp32 (the paper runs
optimizer maths in fp32). Known failure modes of other implementations and what we do:

* ``eigh`` in fp32 fails (or returns NaN) on ill-conditioned factors: retry in fp64, per
  matrix; if that fails too, keep the previous basis / root and warn once.
* TF32 matmuls corrupt the small eigenvalues of ``Q^T L Q``: :func:`full_fp32` switches TF32
  off around the optimizer's matmuls on CUDA.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "eigenbasis",
    "refresh_basis",
    "inverse_root",
    "full_fp32",
    "cuda_tf32_enabled",
    "all_finite",
    "select",
    "EighFailure",
]


class EighFailure(RuntimeError):
    """Raised internally when a symmetric eigendecomposition fails in fp32 and fp64."""


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _eigh(m: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh``; a module-level hook so tests can force failures."""
    return torch.linalg.eigh(m)


def _new_precision_api() -> bool:
    """torch >= 2.9 sets TF32 through ``fp32_precision``; reading the legacy ``allow_tf32``
    after the new API was used raises ("mix of the legacy and new APIs"), so only the new one
    is read where it exists."""
    try:
        torch.backends.cuda.matmul.fp32_precision  # noqa: B018
    except AttributeError:
        return False
    return True


def cuda_tf32_enabled() -> bool:
    """Whether CUDA fp32 matmuls may run in TF32 now, through either API: the
    ``cuda.matmul`` setting, or the global ``torch.backends.fp32_precision`` it inherits when
    it is ``"none"``."""
    if not _new_precision_api():
        return bool(torch.backends.cuda.matmul.allow_tf32)
    local = torch.backends.cuda.matmul.fp32_precision
    if local == "none":
        local = getattr(torch.backends, "fp32_precision", "none")
    return local == "tf32"


def _tf32_matters(device: torch.device) -> bool:
    """TF32 exists for CUDA matmuls only (a module-level hook: CPU tests take the CUDA path)."""
    return device.type == "cuda"


TF32_UNDER_COMPILE = (
    "soap: a compiled optimizer step ran with TF32 matmuls on (torch.backends.fp32_precision "
    "or torch.backends.cuda.matmul.fp32_precision = 'tf32'), which corrupts the "
    "preconditioners and which a compiled graph cannot switch off: call the compiled step "
    "inside `with soap.full_fp32(device):`, or step the optimizer uncompiled"
)


@contextlib.contextmanager
def full_fp32(device: torch.device, count: Tensor | None = None) -> Iterator[None]:
    """IEEE fp32 matmuls inside the block (CUDA only; a no-op on CPU), whatever the caller set
    through either TF32 API (``torch.backends.fp32_precision = "tf32"``, as transformers'
    ``enable_tf32`` and HF Trainer's ``tf32=True`` do, or the legacy ``allow_tf32``); the
    caller's setting is restored on exit.

    Under ``torch.compile`` a flag cannot be switched inside the graph (dynamo folds the read
    and drops the write, and does not guard on it), so a compiled step checks instead, at run
    time: ``count`` (the bucket's CPU step count, an input of the graph) feeds a custom
    operator that raises :data:`TF32_UNDER_COMPILE` when TF32 is on, rather than let the
    eigenbases run in TF32 silently.
    """
    if not _tf32_matters(device):
        yield
        return
    if torch.compiler.is_compiling():
        if count is not None:
            torch.ops.soap_bench.require_fp32_matmuls(count)
        yield
        return
    new = _new_precision_api()
    matmul = torch.backends.cuda.matmul
    old = matmul.fp32_precision if new else matmul.allow_tf32
    if new:
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
    try:
        yield
    finally:
        if new:
            matmul.fp32_precision = old
        else:
            matmul.allow_tf32 = old


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _robust_eigh(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batched eigh with per-matrix fp64 retry.

    Returns ``(eigvals, eigvecs, ok)`` where ``ok`` (bool, ``(B,)``) marks the matrices that
    were decomposed; failed ones have undefined (zero) outputs and must be handled by the
    caller. Eigenvalues are ascending as in ``torch.linalg.eigh``.

    Eager mode checks the result on the host (one synchronisation, only on the steps that
    decompose: SOAP's first step, Shampoo's root refreshes). Under ``torch.compile`` there is
    no retry and no host check: a non-finite result is marked not ok on the device.
    """
    m = m.float()
    eye = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
    # The reference adds 1e-30 I: harmless, and it keeps an all-zero factor well defined.
    shifted = m + 1e-30 * eye
    if torch.compiler.is_compiling():
        vals, vecs = _eigh(shifted)
        ok = torch.isfinite(vals).all(dim=-1) & torch.isfinite(vecs).flatten(1).all(dim=1)
        return vals, vecs, ok
    try:
        vals, vecs = _eigh(shifted)
        if _finite(vals) and _finite(vecs):
            return vals, vecs, torch.ones(m.shape[0], dtype=torch.bool, device=m.device)
    except RuntimeError:
        pass
    vals = torch.zeros(m.shape[:-1], device=m.device, dtype=m.dtype)
    vecs = torch.zeros_like(m)
    ok = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
    for b in range(m.shape[0]):
        for dtype in (torch.float32, torch.float64):
            try:
                v, q = _eigh(shifted[b].to(dtype))
            except RuntimeError:
                continue
            if _finite(v) and _finite(q):
                vals[b], vecs[b], ok[b] = v.to(m.dtype), q.to(m.dtype), True
                break
    return vals, vecs, ok


def all_finite(x: Tensor) -> Tensor:
    """Per stacked tensor ``(B, ...)``: are all entries finite? (``(B,)`` bool, on device)."""
    return torch.isfinite(x.flatten(1).sum(dim=1))


def _host_free(t: Tensor) -> bool:
    """Whether reading ``t``'s value on the host costs nothing (CPU, not under compile)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def select(ok: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new[b]`` where ``ok[b]`` else ``old[b]``: on the device, except that on CPU (where the
    check is free) the common all-ok case skips the copy."""
    if _host_free(ok) and bool(ok.all()):
        return new
    return torch.where(ok.view(-1, *([1] * (new.dim() - 1))), new, old)


def _keep_failed(new: Tensor, ok: Tensor, previous: Tensor | None, what: str) -> Tensor:
    """``new`` where ``ok``, else ``previous`` (identity if none); warns once in eager mode."""
    if not torch.compiler.is_compiling() and not bool(ok.all()):
        _warn_once(what, _FAILURE_MESSAGES[what])
    fallback = (
        previous.float()
        if previous is not None
        else torch.eye(new.shape[-1], dtype=new.dtype, device=new.device).expand_as(new)
    )
    return select(ok, new, fallback)


_FAILURE_MESSAGES = {
    "eigh": "SOAP/Shampoo: eigendecomposition failed in fp32 and fp64; keeping the previous "
    "basis for the affected tensors (check for exploding gradients).",
    "root": "Shampoo: inverse root failed in fp32 and fp64; keeping the previous root for the "
    "affected tensors.",
}


def eigenbasis(factors: Tensor, previous: Tensor | None = None) -> Tensor:
    """Eigenvectors of stacked symmetric ``factors`` ``(B, d, d)``, columns ordered by
    descending eigenvalue (the reference flips ``eigh``'s ascending order).

    Matrices whose decomposition fails in fp32 and fp64 keep ``previous`` (or the identity
    when there is none) and a warning is issued once.
    """
    _, vecs, ok = _robust_eigh(factors)
    return _keep_failed(vecs.flip(-1), ok, previous, "eigh")


def refresh_basis(factor: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step plus QR (the paper's refresh, Algorithm 4).

    1. estimated eigenvalues ``diag(Q^T L Q)``; sort them descending and reorder the columns
       of ``Q`` accordingly (the caller permutes the second moment with the returned order);
    2. ``Q_new, _ = qr(L Q_sorted)``.

    Returns ``(Q_new, order)`` with ``order`` ``(B, d)``. Householder QR of finite input cannot
    fail; a non-finite result (only from a non-finite factor) keeps the sorted old basis for
    that matrix, decided on the device (no host synchronisation on accelerators).

    ``L`` is symmetric, so ``Q^T L`` in row-major memory is ``L Q`` in the column-major layout
    LAPACK wants: one matmul gives both the eigenvalue estimates and QR's input without a
    transposing copy, and ``geqrf`` + ``householder_product`` never form ``R``.
    """
    factor = factor.float()
    basis = basis.float()
    lq_t = basis.mT @ factor  # (L Q)^T
    est = (lq_t * basis.mT).sum(dim=-1)  # diag(Q^T L Q)
    order = torch.argsort(est, dim=-1, descending=True)
    power = torch.gather(lq_t, 1, order[:, :, None].expand_as(lq_t)).mT  # L Q_sorted
    q_new = torch.linalg.householder_product(*torch.geqrf(power))
    ok = all_finite(q_new)
    if _host_free(ok) and bool(ok.all()):
        return q_new, order
    q_sorted = torch.gather(basis, 2, order[:, None, :].expand_as(basis))
    return select(ok, q_new, q_sorted), order


def inverse_root(factor: Tensor, root: float, eps: float, previous: Tensor | None) -> Tensor:
    """``(L + eps I)^(-1/root)`` for stacked symmetric PSD ``factor`` ``(B, d, d)``.

    Computed from an fp32 eigendecomposition (fp64 retry); negative eigenvalues from round-off
    are clamped to zero before ``eps`` is added (DistributedShampoo's convention). Matrices
    whose decomposition fails keep ``previous`` (identity if none) with a one-time warning.
    """
    vals, vecs, ok = _robust_eigh(factor)
    vals = vals.clamp_min(0.0) + eps
    out = (vecs * vals.pow(-1.0 / root).unsqueeze(-2)) @ vecs.mT
    ok = ok & torch.isfinite(out).flatten(1).all(dim=1)
    return _keep_failed(out, ok, previous, "root")
