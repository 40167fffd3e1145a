"""``python tests/lineup_worker.py <training overrides>``: ``scripts.train`` with two test-only
twists, set by environment variables: ``KILL_AT=N`` SIGKILLs the process right after its N-th
optimizer step (a deterministic kill: a short run outpaces a test watching its log), and
``BLOCK=pkg`` makes ``import pkg`` fail as if the library were not installed."""

from __future__ import annotations

import os
import runpy
import signal
import sys

if os.environ.get("BLOCK"):
    for name in os.environ["BLOCK"].split(","):
        sys.modules[name] = None  # type: ignore[assignment]

if os.environ.get("KILL_AT"):
    import scripts.trainer.loop as loop

    at, iteration = int(os.environ["KILL_AT"]), loop._iteration

    def _iteration(run):  # noqa: ANN001, ANN202
        rec = iteration(run)
        if run.step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return rec

    loop._iteration = _iteration

sys.argv = ["scripts.train", *sys.argv[1:]]
runpy.run_module("scripts.train", run_name="__main__")
