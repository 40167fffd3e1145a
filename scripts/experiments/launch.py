"""How one run is launched: plain python, torchrun on this node, or ``srun`` + one torchrun
per node meeting at a c10d rendezvous; and the Slurm job that runs ``scripts.reproduce``
over several nodes (``--slurm --nodes N``)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

RDZV_PORT = 29500


def head_node(dry: bool) -> str:
    """The first node of this Slurm allocation: the c10d rendezvous endpoint."""
    if dry or "SLURM_JOB_NODELIST" not in os.environ:
        return os.environ.get("MASTER_ADDR", "$HEAD_NODE")
    out = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[0]


def launch(
    gpus: int, nodes: int, restarts: int, run_id: str, head: str = "$HEAD_NODE"
) -> list[str]:
    """The launcher of one run: plain python (1 process), torchrun on this node, or - on
    several nodes - ``srun`` starting one torchrun per node that meet at a c10d rendezvous on
    the first node. ``restarts``: torchrun restarts the whole group when a rank dies (the
    trainer resumes from its last checkpoint; tested in tests/test_multinode.py)."""
    if nodes <= 1 and gpus <= 1 and restarts == 0:
        return [sys.executable, "-m"]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}"]
    if restarts:
        run.append(f"--max-restarts={restarts}")
    if nodes <= 1:
        if not restarts:  # a port of its own: runs may share the node (--jobs)
            return [*run, f"--master-port={_free_port()}", "-m"]
        # Restarts need the c10d rendezvous: with the static one (--master-port) the restarted
        # group read the dead rank's gloo address from the previous attempt and could not
        # connect; with --standalone the restarted group hung (both seen with torch 2.13).
        rdzv = [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=localhost:{_free_port()}",
            f"--rdzv-id={run_id}",
        ]
        return [*run, *rdzv, "-m"]
    rdzv = [
        f"--nnodes={nodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head}:{RDZV_PORT}",
        f"--rdzv-id={os.environ.get('SLURM_JOB_ID', 'local')}-{run_id}",
    ]
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", *run, *rdzv, "-m"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def sbatch_script(args: argparse.Namespace, argv: list[str]) -> str:
    """One Slurm job over ``--nodes`` nodes that runs this driver (every phase, each run on
    all nodes); ``--requeue``: after a preemption Slurm starts it again and the driver
    continues (completed runs are skipped, interrupted ones resume)."""
    inner = [a for a in argv if a not in ("--slurm", "--dry-run")]
    out = Path(args.out or f"results/runs/{args.preset}")
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name=soap-bench-{args.preset}",
            f"#SBATCH --nodes={args.nodes}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --gpus-per-node={args.gpus}",
            "#SBATCH --exclusive",
            "#SBATCH --requeue",
            f"#SBATCH --output={out}/slurm-%j.out",
            "set -euo pipefail",
            f"cd {shlex.quote(str(Path(__file__).resolve().parents[2]))}",
            shlex.join([sys.executable, "-m", "scripts.reproduce", *inner]),
            "",
        ]
    )
