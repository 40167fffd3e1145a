"""Sweeps that survive their jobs: a Hydra callback that ends a sweep with its outcomes.

``scripts.train`` records each job's outcome in :data:`OUTCOMES` (Hydra's basic launcher runs
the jobs in this process; launchers that run them elsewhere, such as submitit, report through
their own job records instead) and catches the job's failure so that Hydra goes on to the
next job. At the end of the sweep :class:`SweepSummary` prints one line counting completed,
diverged and failed jobs, writes ``sweep.json`` in Hydra's sweep directory and exits 1
unless every job completed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

OUTCOMES: list[dict[str, Any]] = []
STATUSES = ("completed", "diverged", "failed")


class SweepSummary(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        counts = {k: sum(o["status"] == k for o in OUTCOMES) for k in STATUSES}
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "sweep.json").write_text(json.dumps({"jobs": OUTCOMES, **counts}, indent=2))
        print(
            f"sweep: {len(OUTCOMES)} jobs: {counts['completed']} completed, {counts['diverged']} "
            f"diverged, {counts['failed']} failed (each job: {sweep_dir / 'sweep.json'})"
        )
        if counts["completed"] != len(OUTCOMES):
            sys.exit(1)
