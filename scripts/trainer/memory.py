"""Peak memory of one run: the CUDA allocator's peak on GPU, the resident set's high-water mark
(``VmHWM``) on CPU - per run, even when several runs share a process (the demo's workers)."""

from __future__ import annotations

import torch


def reset_peak_memory(device: torch.device) -> None:
    """Start this run's measurement. On CPU, Linux's resident-set high-water mark is reset
    through /proc/self/clear_refs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes since :func:`reset_peak_memory` (None where the system does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
