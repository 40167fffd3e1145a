"""HSDP through the trainer (issue 21): 4 gloo processes as 2 replicas x 2 shards
(``train.dp_replicate=2``: FSDP2's ``fully_shard`` on Accelerate's 2-D mesh, SOAP stepping
each matrix whole on one owner of the whole world) equal one process, and the 2x2 checkpoint
resumes on 1x2 (FSDP2) and on one process. The optimizer-level equivalence for SOAP, Shampoo
and Muon, and user checkpoints 2x2 -> 1x2 -> 1, are in tests/test_distributed.py."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.helpers import cli, metrics, summary
from tests.helpers import port as worker_port
from tests.test_train import TWO, _continues, _curve_tolerance, _same_curve, _twin_runs

ARGS = [*TWO, "optimizer=soap", "regime.max_precond_dim=128", "train.checkpoint_every=3"]


def _torchrun(n: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
        f"--master_port={worker_port(port)}", "-m",
    ]  # fmt: skip


@pytest.mark.slow  # ~50 s, 4 processes; HSDP: tests/test_distributed.py
def test_hsdp_2x2_matches_one_process_and_resumes_on_fewer_ranks(tmp_path, cache_dir, monkeypatch):
    base, twin = _twin_runs(ARGS, tmp_path, cache_dir, monkeypatch)
    tol = _curve_tolerance(base, twin)
    d = tmp_path / "hsdp"
    hsdp = ["regime.micro_batch=2", "train.dp_replicate=2", f"run_dir={d}"]
    r = cli([*ARGS, *hsdp], cache_dir, launcher=_torchrun(4, 29581), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    s = summary(d)
    assert s["world_size"] == 4
    assert json.loads((d / "env.json").read_text())["data_parallel"] == "hsdp 2x2"
    _same_curve(base, metrics(d), tol)
    one = summary(tmp_path / "base")["optimizer_state_bytes"]
    assert s["optimizer_state_bytes"] < 0.4 * one  # split over the world, not per replica
    # The 2x2 run as if stopped after its step-3 checkpoint, resumed as 1x2 and as one process.
    for label, launcher, more in (
        ("1x2", _torchrun(2, 29583), ["regime.micro_batch=4", "train.fsdp=true"]),
        ("1x1", None, ["regime.micro_batch=8"]),
    ):
        cut = tmp_path / label
        shutil.copytree(d, cut)
        (cut / "summary.json").unlink()
        shutil.rmtree(cut / "checkpoints" / "step-00000006")
        (cut / "checkpoints" / "latest").write_text("step-00000003")
        r = cli([*ARGS, *more, f"run_dir={cut}"], cache_dir, launcher=launcher, timeout=300)
        assert r.returncode == 0 and "resumed" in r.stdout, (label, r.stderr[-3000:])
        want = {"1x2": "fsdp 1x2", "1x1": "ddp"}[label]
        assert json.loads((cut / "env.json").read_text())["data_parallel"] == want
        _continues(metrics(d), metrics(cut), 3, twin)


def test_a_topology_that_is_not_the_world_is_refused(tmp_path, cache_dir):
    r = cli(
        [*ARGS, "train.dp_replicate=3", f"run_dir={tmp_path / 'x'}"],
        cache_dir,
        launcher=_torchrun(2, 29585),
        timeout=120,
    )
    assert r.returncode != 0
    assert "train.dp_replicate=3 does not divide the 2 processes started" in r.stderr
