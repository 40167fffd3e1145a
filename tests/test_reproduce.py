"""The paper pipeline's driver, rehearsed on CPU: prepare, LR sweep, fractions, report - with
2 gloo processes per run and data streamed through the C4 code path - and continued after a
kill."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, _env, kill_tree


def _cmd(out, cache_dir):
    return [
        sys.executable,
        "-m",
        "scripts.reproduce",
        "rehearsal",
        "--gpus",
        "2",
        "--quick",
        "--optimizers",
        "adamw",
        "soap",
        "--lrs",
        "3e-3",
        "1e-2",
        "--fractions",
        "0.5",
        "--out",
        str(out),
        f"cache_dir={cache_dir}",
        "train.max_steps=30",
        "train.checkpoint_every=5",
        "train.eval_every=10",
    ]


# Slow (1.5-2.5 min): `make test-all` runs it; the quick driver paths are in test_first_hour.py.
@pytest.mark.slow
def test_rehearsal_runs_every_phase_and_continues_after_a_kill(tmp_path, cache_dir):
    out = tmp_path / "rehearsal"
    proc = subprocess.Popen(
        _cmd(out, cache_dir),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    first = out / "adamw" / "lr0.003_frac1_seed0" / "summary.json"
    second = out / "adamw" / "lr0.01_frac1_seed0" / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < 300:  # kill during the second run, after its first checkpoint
        if first.exists() and second.exists() and len(second.read_text().splitlines()) >= 7:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.wait()
    assert not (out / "adamw" / "lr0.01_frac1_seed0" / "summary.json").exists()
    r = subprocess.run(
        _cmd(out, cache_dir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "already completed" in log  # the first run is not redone
    assert re.search(r"resumed \S+lr0\.01_frac1_seed0 at step [1-9]", log), log[-2000:]
    assert "all phases done" in log
    report = (out / "report" / "report.md").read_text()
    assert "| soap |" in report and "| adamw |" in report and "adamw's final loss" in report
    assert (out / "report" / "dashboard" / "index.html").exists()
    assert len(list(out.rglob("summary.json"))) == 6  # 2 optimizers x (2 LRs + 1 fraction)


def test_multi_node_slurm_job_and_launch_commands(tmp_path, capsys):
    """``--slurm --nodes 2``: one sbatch job over 2 nodes that runs the driver; inside it
    every run is srun + one torchrun per node meeting at a c10d rendezvous, with restarts."""
    from scripts.experiments.reproduce import launch, main

    out = tmp_path / "rp"
    argv = ["paper_360m_small_batch", "--slurm", "--nodes", "2", "--gpus", "8", "--out", str(out)]
    assert main([*argv, "--dry-run"]) == 0
    assert not out.exists()  # --dry-run shows the job, writes nothing
    script = capsys.readouterr().out.split("reproduce.sbatch:\n", 1)[1]
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --requeue" in script
    last = script.strip().splitlines()[-1]
    assert "scripts.reproduce paper_360m_small_batch --nodes 2 --gpus 8" in last
    assert "--slurm" not in last and "--dry-run" not in last
    capsys.readouterr()
    assert (
        main(
            [
                "paper_360m_small_batch",
                "--nodes",
                "2",
                "--gpus",
                "8",
                "--out",
                str(out),
                "--dry-run",
            ]
        )
        == 0
    )
    runs = [x for x in capsys.readouterr().out.splitlines() if "scripts.train" in x]
    assert runs and all(x.startswith("+ srun --nodes=2") for x in runs)
    for flag in ("--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--max-restarts=3"):
        assert flag in runs[0], flag
    assert launch(1, 1, 0, "x")[-1] == "-m" and "torch.distributed.run" not in launch(1, 1, 0, "x")
    assert "--max-restarts=1" in launch(2, 1, 1, "x")


# Slow (1.5-2.5 min): `make test-all` runs it; the quick driver paths are in test_first_hour.py.
@pytest.mark.slow
def test_full_tuning_phase_feeds_the_comparison(tmp_path, cache_dir):
    """``--tune full``: scripts.tune first (a real, tiny space: one learning rate, 2 weight
    decays per optimizer), then each optimizer at its tuned settings, fractions, report."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "threshold: 0.0\noptimizers:\n"
        + "".join(
            f"  {o}:\n    - {{name: lr, values: [1.0e-2], start: 1.0e-2}}\n"
            "    - {name: weight_decay, values: [0.0, 0.1], start: 0.0}\n"
            for o in ("adamw", "soap")
        )
    )
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "scripts.reproduce", "rehearsal", "--gpus", "1", "--quick",
           "--optimizers", "adamw", "soap", "--fractions", "0.5", "--tune", "full",
           "--tune-space", str(space), "--tune-budget", "3", "--out", str(out),
           f"cache_dir={cache_dir}"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    tuned = json.loads((out / "tune" / "tune.json").read_text())["optimizers"]
    for opt in ("adamw", "soap"):
        best = tuned[opt]["best"]
        assert tuned[opt]["trials"] == 2
        run = out / opt / f"lr{best['lr']:g}_frac1_seed0"
        cfg = (run / "config.yaml").read_text()
        assert f"weight_decay: {best['weight_decay']}" in cfg, cfg
        frac = out / opt / f"lr{best['lr']:g}_frac0.5_seed0"
        assert f"weight_decay: {best['weight_decay']}" in (frac / "config.yaml").read_text()
        assert len(json.loads((frac / "summary.json").read_text())["eval_history"]) == 1
    md = (out / "report" / "report.md").read_text()
    assert "| soap |" in md
    # The tuning in the same report (scripts/report/tuning.py), its trials not counted as runs.
    assert "## Tuning (tune)" in md and "| full | soap |" in md
    assert "(tuning/sensitivity_weight_decay.png)" in md
    assert "Tuning (tune)" in (out / "report" / "dashboard" / "index.html").read_text()
    import pandas as pd

    listed = pd.read_csv(out / "report" / "summary.csv")["run_dir"].tolist()
    assert len(listed) == 4 and not any("/tune/" in d for d in listed), listed  # 2 x (1, 0.5)


def test_edge_extension_rule():
    from scripts.measures import edge_extension

    assert edge_extension([(1e-3, 3.0), (3.16e-3, 2.9), (1e-2, 2.8)]) == 0.0316
    assert edge_extension([(1e-3, 2.7), (3.16e-3, 2.9), (1e-2, 2.8)]) == 0.000316
    assert edge_extension([(1e-3, 3.0), (3.16e-3, 2.7), (1e-2, 2.8)]) is None  # interior
    assert edge_extension([(1e-3, None), (1e-2, None)]) is None  # nothing finite
    assert edge_extension([(1e-3, 2.0)]) is None


def test_reproduce_extends_a_sweep_whose_best_is_on_the_edge(tmp_path, monkeypatch):
    """``--extend 5``: the sweep goes half a decade beyond its edge while the best sits there
    (the bowl's optimum is at lr 0.1), stops once it is interior, and phase 2 runs at the
    extended best."""
    import math
    from concurrent.futures import Future

    from scripts.experiments import reproduce

    ran: list[list[str]] = []

    def lr_of(cmd):
        return float(next(a for a in cmd if a.startswith("optimizer.lr=")).split("=")[1])

    class Ran:  # the protocol's runs, recorded and "finished" at once
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def submit(self, cmd):
            ran.append(cmd)
            f = Future()
            f.set_result(0)
            return f

    def bowl(cmd):
        return 3.0 + (math.log10(lr_of(cmd)) + 1.0) ** 2

    monkeypatch.setattr(reproduce, "Commands", Ran)
    monkeypatch.setattr(reproduce, "preflight", lambda cmds, world: None)
    monkeypatch.setattr(reproduce, "_final_loss", bowl)
    monkeypatch.setattr(reproduce, "_run", lambda cmd, dry: None)
    monkeypatch.setattr(reproduce.subprocess, "call", lambda cmd: 0)
    argv = ["demo", "--gpus", "1", "--optimizers", "adamw", "--lrs", "0.001", "0.00316", "0.01",
            "--fractions", "0.5", "--extend", "5", "--out", str(tmp_path)]  # fmt: skip
    assert reproduce.main(argv) == 0
    full = [lr_of(c) for c in ran if "train.fraction=1.0" in c]
    assert full == [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316]  # then 0.1 is interior
    frac = [lr_of(c) for c in ran if "train.fraction=0.5" in c]
    assert frac == [0.1]
    # Each run's record says which preset and phase produced it.
    phases = [next(a for a in c if a.startswith("protocol.phase=")) for c in ran]
    assert phases == ["protocol.phase=sweep"] * 3 + ["protocol.phase=extend"] * 3 + [
        "protocol.phase=fractions"
    ]
    assert all("protocol.preset=demo" in c for c in ran)
