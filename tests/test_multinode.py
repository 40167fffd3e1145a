"""Beyond one node, on one CPU machine (issue 21): a 2-node c10d rendezvous (two torchrun
invocations, one process each) trains like one process, and a rank killed mid-run under
``torchrun --max-restarts 1`` is restarted and resumes to the uninterrupted run's losses."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.helpers import cli, metrics, spawn, summary
from tests.helpers import port as worker_port
from tests.test_train import _curve_tolerance, _same_curve, _twin_runs, _wait_for_lines

RUN = [
    "optimizer=soap",
    "train.max_steps=6",
    "train.eval_every=3",
    "regime.precondition_frequency=2",
    "regime.max_precond_dim=128",  # as in tests/test_train.py: most factors full rank
]


def _node(rank: int, port: int, run_dir, cache_dir) -> subprocess.Popen:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--node-rank={rank}",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=localhost:{worker_port(port)}",
        "--rdzv-id=soap-bench-test",
        "-m",
    ]
    return spawn([*RUN, "regime.micro_batch=4", f"run_dir={run_dir}"], cache_dir, launcher)


def test_two_nodes_rendezvous_and_equal_one_process(tmp_path, cache_dir, monkeypatch):
    base, twin = _twin_runs(RUN, tmp_path, cache_dir, monkeypatch)
    tol = _curve_tolerance(base, twin)
    d = tmp_path / "two_nodes"
    nodes = [_node(r, 29631, d, cache_dir) for r in (0, 1)]
    for n in nodes:
        out, err = n.communicate(timeout=300)
        assert n.returncode == 0, err[-3000:]
    s = summary(d)
    assert s["world_size"] == 2
    _same_curve(base, metrics(d), tol)


def _workers(torchrun_pid: int) -> list[int]:
    """The training processes torchrun started (its children running scripts.train)."""
    out = []
    for stat in __import__("pathlib").Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == torchrun_pid and b"scripts.train" in cmd:
            out.append(int(stat.parent.name))
    return sorted(out)


@pytest.mark.slow  # ~45 s (make test-all)
def test_a_killed_rank_is_restarted_and_the_run_resumes(tmp_path, cache_dir):
    """Under the c10d rendezvous on this node, as ``scripts.reproduce`` launches restartable
    runs. With the static rendezvous (``--master-port``) the restarted group read the dead
    rank's gloo address from the previous attempt and failed with "connection refused"
    (reproduced by hand, torch 2.13: why this test used to fail); with ``--standalone`` the
    restarted group hung."""
    args = [
        "optimizer=soap",
        "train.max_steps=16",
        "train.eval_every=4",
        "train.checkpoint_every=3",
        "regime.precondition_frequency=3",
        "regime.micro_batch=4",
    ]

    from scripts.experiments.reproduce import launch

    ref = tmp_path / "ref"
    r = cli([*args, f"run_dir={ref}"], cache_dir, launcher=launch(2, 1, 0, "ref"), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "killed"
    restartable = launch(2, 1, 1, "killed")
    assert "--rdzv-backend=c10d" in restartable and "--max-restarts=1" in restartable
    proc = spawn([*args, f"run_dir={run}"], cache_dir, restartable)
    _wait_for_lines(run / "metrics.jsonl", 8, proc)  # past the step-6 checkpoint
    workers = _workers(proc.pid)
    assert len(workers) == 2, workers
    __import__("os").kill(workers[-1], 9)  # one rank lost (preemption, a node failure)
    t0 = time.time()
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed" in out, out[-2000:]
    assert time.time() - t0 < 400
    a, b = metrics(ref), metrics(run)
    assert [x["step"] for x in b] == list(range(1, 17))
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    assert [x.get("eval_loss") for x in a] == [x.get("eval_loss") for x in b]
