"""Concurrent CPU runs (scripts/experiments/cells.py, issue 19 item 5): slots, worker processes, the
concurrency each run records, and a study run end to end with two runs at once."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from scripts.experiments import cells


def _env_of_worker(_: int) -> dict[str, str]:
    import torch

    return {
        "threads": str(torch.get_num_threads()),
        "concurrent": os.environ.get(cells.CONCURRENT_ENV, ""),
        "pid": str(os.getpid()),
    }


def test_in_process_workers_get_their_share_of_the_cores():
    with cells.InProcess(2) as pool:
        got = [f.result() for f in [pool.submit(_env_of_worker, i) for i in range(6)]]
    assert {g["threads"] for g in got} == {str(cells.threads_per_run(2))}
    assert {g["concurrent"] for g in got} == {"2"}
    assert str(os.getpid()) not in {g["pid"] for g in got}
    with cells.InProcess(1) as pool:  # one job: this very process, nothing recorded
        f = pool.submit(_env_of_worker, 0)
        assert f.done() and f.result()["pid"] == str(os.getpid())


def test_commands_run_in_slots_at_most_jobs_at_once(monkeypatch):
    monkeypatch.setattr(cells, "visible_devices", lambda: [str(i) for i in range(6)])  # 6 GPUs
    running, peak, seen = [0], [0], []
    lock = threading.Lock()

    def call(cmd, env):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append((cmd[-1], env["CUDA_VISIBLE_DEVICES"], env[cells.CONCURRENT_ENV]))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return int(cmd[-1]) % 2  # odd commands fail: their codes come back in order

    cmds = [["torchrun", str(i)] for i in range(7)]
    assert cells.run_commands(cmds, 3, gpus_per_run=2, call=call) == [i % 2 for i in range(7)]
    assert peak[0] == 3
    # each slot its own GPUs: 3 slots x 2 GPUs, disjoint
    assert {d for _, d, _ in seen} == {"0,1", "2,3", "4,5"}
    assert {c for _, _, c in seen} == {"3"}


def test_a_multi_process_run_shares_its_slots_cores(monkeypatch):
    """A torchrun command of N processes in a slot: each rank gets the slot's threads / N
    (on CPU, N ranks with the slot's threads each would oversubscribe the cores)."""
    monkeypatch.setattr(cells.os, "cpu_count", lambda: 16)
    cmd = ["torchrun", "--nproc_per_node", "2", "-m", "scripts.train"]
    assert cells.procs_per_run(cmd) == 2
    assert cells.procs_per_run(["torchrun", "--nproc-per-node=4", "x"]) == 4
    assert cells.procs_per_run(["python", "-m", "scripts.train"]) == 1
    got = []
    cells.run_commands([cmd, cmd[3:]], 2, call=lambda c, env: got.append(env) or 0)
    assert sorted(e["OMP_NUM_THREADS"] for e in got) == ["4", "8"]  # 16 cores / 2 slots / ranks


# Slow (1.5-2.5 min): `make test-all` runs it; the quick driver paths are in test_first_hour.py.
@pytest.mark.slow
def test_a_study_with_two_runs_at_once(tmp_path, cache_dir, monkeypatch):
    """``scripts.reproduce --study`` with ``--jobs 2``: one-process runs train inside two
    workers, every run records that it shared the machine, and the study report says so."""
    from scripts.experiments import reproduce, study

    monkeypatch.setattr(study, "STUDIES", tmp_path)
    (tmp_path / "two.yaml").write_text(
        "experiments:\n"
        "  - {name: small, preset: ladder, overrides: [model=ladder100k]}\n"
        "  - {name: large, preset: ladder, overrides: [model=ladder300k]}\n"
    )
    out = tmp_path / "out"
    argv = ["--study", "two", "--gpus", "1", "--jobs", "2", "--optimizers", "adamw", "soap",
            "--lrs", "0.01", "--fractions", "0.5", "--best-seeds", "1", "--quick",
            "--out", str(out), f"cache_dir={cache_dir}"]  # fmt: skip
    assert reproduce.main(argv) == 0
    for exp in ("small", "large"):
        runs = sorted(p for p in (out / exp).glob("*/lr*_seed*") if p.is_dir())
        # per optimizer: the LR + a second seed + a fraction
        assert len(runs) == 6, runs
        for r in runs:
            assert json.loads((r / "summary.json").read_text())["status"] == "completed", r
            assert json.loads((r / "env.json").read_text())["hardware"]["concurrent_runs"] == 2
    md = (out / "report" / "report.md").read_text()
    assert "| small | soap |" in md and "| large | soap |" in md
    assert "shared the machine" in (out / "small" / "report" / "report.md").read_text()


@pytest.mark.parametrize("jobs", [0, -1])
def test_bad_jobs_is_one_line(jobs, capsys):
    from scripts.experiments import reproduce

    with pytest.raises(SystemExit) as e:
        reproduce.main(["demo", "--plan", "--jobs", str(jobs)])
    assert e.value.code == 2 and "--jobs must be >= 1" in capsys.readouterr().err


# ---- issue 32 item 5: each worker its own GPUs, a pre-set list subdivided -----------------
def _visible(_: int) -> tuple[str, int]:
    time.sleep(1.0)  # both workers busy at once: each answers once
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), os.getpid()


def test_each_in_process_worker_sees_its_own_device(monkeypatch):
    """``--jobs 2`` with one-process runs on a 2-GPU node: each worker one GPU. Failed before
    the fix: the workers got no CUDA_VISIBLE_DEVICES, so every run used cuda:0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with cells.InProcess(2, gpus_per_run=1) as pool:
        got = [f.result() for f in [pool.submit(_visible, i) for i in range(2)]]
    assert len({pid for _, pid in got}) == 2, got
    assert sorted(d for d, _ in got) == ["0", "1"], got


def test_slot_env_subdivides_a_preset_device_list(monkeypatch):
    """Slurm gave this job GPUs 4-7 (or UUIDs): slots get parts of that list, not 0..n-1.
    Failed before the fix: slot 1 got "1", a GPU outside the job's allocation."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert cells.slot_env(2, 0, 2)["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert cells.slot_env(2, 1, 2)["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert cells.slot_env(4, 3, 1)["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb")
    assert cells.slot_env(2, 1, 1)["CUDA_VISIBLE_DEVICES"] == "GPU-bb"
    with pytest.raises(ValueError, match="lower --jobs"):
        cells.slot_env(3, 0, 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "CUDA_VISIBLE_DEVICES" not in cells.slot_env(2, 1, 1)  # no GPU here: nothing set


def test_tuner_workers_get_their_own_devices(monkeypatch, tmp_path):
    """``tune.workers=2`` on two GPUs: worker 0 (this process) and the helper each get one."""
    import subprocess

    from scripts.experiments import tune

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    launched = []

    class FakePopen:
        def __init__(self, cmd, cwd=None, env=None):
            launched.append(env["CUDA_VISIBLE_DEVICES"])

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(tune, "work", lambda *a: None)
    monkeypatch.setattr(tune, "summary", lambda *a: {"optimizers": {}})
    monkeypatch.setattr(os, "environ", dict(os.environ))
    argv = ["tune.objective=synthetic", "tune.workers=2", f"tune.out={tmp_path}"]
    assert tune.main(argv) == 0
    assert launched == ["3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
