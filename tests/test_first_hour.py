"""The first hour of a user (issue 30), each case a subprocess driving a CLI as a shell would:
interpolated run directories (single run, sweep, the driver), the driver's launch default on
this CPU machine and its one-line stop at a configuration it cannot start, a third-party
optimizer from a config file through ``scripts.reproduce`` and ``scripts.tune``, an offline
wandb run that ``wandb sync`` would take, and ``--help`` of every command with no side effect.
(The tuner on PostgreSQL: tests/test_tune_postgres.py; the README's commands:
tests/test_readme.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import FAST, REPO, _env


def _run(args: list[str], timeout: int = 600, env: dict | None = None, cwd: Path = REPO):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_dir_named_after_a_hyperparameter_single_run_and_sweep(tmp_path, cache_dir):
    """``run_dir=runs/${optimizer.lr}``: failed before with InterpolationKeyError (the key
    check resolved values in a sub-config that could not see the root)."""
    short = ["train.max_steps=2", "train.eval_every=2", f"cache_dir={cache_dir}"]
    r = _run(["scripts.train", *FAST, *short, f"run_dir={tmp_path}/single/${{optimizer.lr}}"])
    assert r.returncode == 0, r.stderr[-1500:]
    assert (tmp_path / "single" / "0.003" / "summary.json").exists()
    r = _run(
        ["scripts.train", "-m", *FAST, *short, "optimizer.lr=1e-3,2e-3",
         f"run_dir={tmp_path}/sweep/${{optimizer_name}}-${{optimizer.lr}}",
         f"hydra.sweep.dir={tmp_path}/hydra"]
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-1500:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["adamw-0.001", "adamw-0.002"]


def test_reproduce_on_a_cpu_machine_with_a_third_party_optimizer(tmp_path, cache_dir):
    """No ``--gpus``: one process per run here (was torchrun with 8 ranks, every run failing);
    ``torch.optim.Adafactor`` from configs/optimizer/adafactor.yaml through every phase; the
    cache directory through an ``${oc.env:...}`` interpolation."""
    out = tmp_path / "rp"
    r = _run(
        ["scripts.reproduce", "demo", "--optimizers", "adamw", "adafactor", "--quick",
         "--lrs", "0.01", "--fractions", "0.5", "--out", str(out), "cache_dir=${oc.env:FH_CACHE}",
         *FAST, "train.max_steps=4", "train.eval_every=2"],
        env={"FH_CACHE": str(cache_dir)},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    assert "--gpus 1 (no GPU here" in r.stderr
    assert "nproc" not in r.stdout  # plain python, no torchrun
    for opt in ("adamw", "adafactor"):
        runs = sorted((out / opt).glob("lr*_seed*"))
        assert len(runs) == 2, runs  # the LR and its fraction
        for d in runs:
            assert json.loads((d / "summary.json").read_text())["status"] == "completed"
    assert "adafactor" in (out / "report" / "report.md").read_text()


def test_reproduce_stops_at_a_configuration_it_cannot_start(tmp_path, cache_dir):
    """A run that cannot start stops the driver in one line before any run (it ran every
    cell into the same error, behind torchrun's failure tables)."""
    out = tmp_path / "bad"
    r = _run(
        ["scripts.reproduce", "demo", "--optimizers", "adamw", "--quick", "--out", str(out),
         "regime.micro_batch=7", f"cache_dir={cache_dir}"]
    )  # fmt: skip
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "regime.micro_batch" in errors[0], r.stderr[-1000:]
    assert not list(out.glob("adamw/*")), "no run should have started"


def test_tune_with_a_third_party_optimizer(tmp_path, cache_dir):
    space = tmp_path / "space.yaml"
    space.write_text(
        "threshold: 0.0\nnoise_seeds: 0\noptimizers:\n"
        "  adafactor:\n    - {name: lr, values: [1.0e-2, 3.0e-2], start: 1.0e-2}\n"
    )
    r = _run(
        ["scripts.tune", f"tune.space={space}", "tune.optimizers=[adafactor]", "tune.budget=2",
         f"tune.out={tmp_path / 'tune'}", *FAST, "train.max_steps=3", "train.eval_every=3",
         f"cache_dir={cache_dir}"]
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    res = json.loads((tmp_path / "tune" / "tune.json").read_text())["optimizers"]["adafactor"]
    assert res["trials"] == 2 and all(t["status"] == "completed" for t in res["trials_table"])


def test_wandb_offline_run_is_syncable(tmp_path, cache_dir):
    run_dir = tmp_path / "wb"
    r = _run(
        ["scripts.train", *FAST, "train.max_steps=2", "train.eval_every=2",
         f"cache_dir={cache_dir}", f"run_dir={run_dir}", "wandb.mode=offline"],
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-1500:]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    s = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(runs[0])],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env({"WANDB_MODE": "offline"}),
    )
    assert s.returncode == 0 and "Would sync 1 run" in s.stdout + s.stderr, s.stdout + s.stderr
    data = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"eval_loss" in data or b"eval/loss" in data  # the metrics are in the file


COMMANDS = [
    "scripts.train", "scripts.prepare", "scripts.demo", "scripts.reproduce", "scripts.tune",
    "scripts.tune_report", "scripts.report", "scripts.report.study", "scripts.gpu_check",
    "scripts.bench.optimizer", "scripts.bench.loss", "scripts.bench.data",
    "scripts.experiments.fortunes_corpus",
]  # fmt: skip


def _tree(root: Path) -> dict[str, float]:
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in (".git", ".venv", "__pycache__", ".pytest_cache")]
        for f in files:
            p = Path(d) / f
            out[str(p.relative_to(root))] = p.stat().st_mtime
    return out


def test_every_command_answers_help_and_does_nothing_else():
    """``scripts.tune --help`` started a real tune (18 crashed trials written to
    results/runs/tune); several commands refused ``--help``. Half of them asked with ``-h``."""
    from concurrent.futures import ThreadPoolExecutor

    before = _tree(REPO)
    asks = [(m, "-h" if i % 2 else "--help") for i, m in enumerate(COMMANDS)]
    with ThreadPoolExecutor(2) as pool:  # two at once: each is mostly its imports
        answers = list(pool.map(lambda a: _run(list(a), timeout=120), asks))
    for (m, flag), r in zip(asks, answers, strict=True):
        assert r.returncode == 0, f"{m} {flag}: exit {r.returncode}: {r.stderr[-500:]}"
        text = r.stdout.lower()
        assert "usage" in text or "python -m" in text or "powered by hydra" in text, (m, text)
    assert _tree(REPO) == before, "a --help wrote or changed files"


def test_plan_and_dry_run_write_nothing(tmp_path):
    """``--dry-run`` wrote an sbatch under results/runs/ and exported a hub folder into the
    cache; ``--plan`` exported it too."""
    from concurrent.futures import ThreadPoolExecutor

    before = _tree(REPO)
    cache = f"cache_dir={tmp_path / 'cache'}"
    runs = []
    for args in (
        ["rehearsal", "--plan", cache],
        ["rehearsal", "--dry-run", cache],
        ["paper_660m_small_batch", "--slurm", "--nodes", "2", "--gpus", "8", "--dry-run",
         "--out", str(tmp_path / "slurm")],
    ):  # fmt: skip
        runs.append(["scripts.reproduce", *args])
    with ThreadPoolExecutor(2) as pool:
        for r in pool.map(lambda a: _run(a, timeout=120), runs):
            assert r.returncode == 0, r.stderr[-800:]
    assert _tree(REPO) == before
    assert not list(tmp_path.rglob("*")), list(tmp_path.rglob("*"))


def test_a_report_never_replaces_committed_results_with_fewer(tmp_path):
    """``scripts.tune_report results/tune-demo`` on a clean clone (the trials' run directories
    are not committed) rewrote tune.md with "not reached" in every row, and exited 0."""
    import shutil

    src = next((REPO / "results" / "tune-demo").rglob("tune.md")).parent  # the committed one
    work = tmp_path / "tune-demo"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("runs"))
    before = (work / "tune.md").read_text()
    # From an empty directory: the trials' run directories are relative to the repository
    # root, and a working tree that ran `make tune-demo` has them there (a clean clone not).
    r = _run(["scripts.tune_report", str(work)], timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "not here" in r.stderr and (work / "tune.md").read_text() == before
