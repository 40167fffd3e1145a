"""Runs, sweeps and checkpoints that survive failures and misuse (issue 20): each ends in
working behaviour or one line naming the problem and the fix, a non-zero exit, nothing lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import FAST, REPO, _env, cli, metrics, run_inprocess, summary

SMALL = ["train.max_steps=12", "train.eval_every=4", "train.checkpoint_every=3"]


# ---- sweeps -----------------------------------------------------------------------------
def test_sweep_goes_on_after_a_diverged_and_a_misconfigured_job(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.train",
            "-m",
            *FAST,
            f"cache_dir={cache_dir}",
            "train.max_steps=8",
            "train.eval_every=4",
            "optimizer.lr=1e5,-1,3e-3",
            f"run_dir={tmp_path}/runs/" + "${hydra:job.num}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("sweep: 3 jobs: 1 completed, 1 diverged, 1 failed"), last
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["diverged", "failed", "completed"]
    assert jobs[1]["exit_code"] == 2 and "optimizer.lr" in jobs[1]["error"]
    assert summary(tmp_path / "runs" / "2")["status"] == "completed"
    # The divergence message says what is true: which iteration, how many steps, no checkpoint.
    msg = summary(tmp_path / "runs" / "0")["message"]
    assert "no checkpoint had been written yet" in msg and "after" in msg


def test_sweep_with_one_fixed_run_dir_is_refused_before_starting(tmp_path, cache_dir):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.train",
            "-m",
            "optimizer.lr=1e-3,3e-3",
            f"run_dir={tmp_path}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "same for every job" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- run identity ------------------------------------------------------------------------
def test_a_run_dir_with_another_configuration_is_refused_naming_the_keys(tmp_path, cache_dir):
    run_dir = tmp_path / "r"
    assert (
        cli(["optimizer=soap", "train.max_steps=2", f"run_dir={run_dir}"], cache_dir).returncode
        == 0
    )
    r = cli(
        ["optimizer=adamw", "optimizer.lr=0.1", "train.max_steps=2", f"run_dir={run_dir}"],
        cache_dir,
    )
    assert r.returncode == 2, r.stdout
    assert "another configuration" in r.stderr and "optimizer._target_" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "already completed" not in r.stdout
    # The same configuration, with only output options changed, is the same run: skipped.
    r = cli(
        ["optimizer=soap", "train.max_steps=2", "train.log_every=5", f"run_dir={run_dir}"],
        cache_dir,
    )
    assert r.returncode == 0 and "already completed" in r.stdout


def test_resume_force_continues_and_records_what_changed(tmp_path, cache_dir):
    run_dir = tmp_path / "r"
    base = ["optimizer=soap", "train.max_steps=6", "train.checkpoint_every=3", f"run_dir={run_dir}"]
    assert cli(base, cache_dir).returncode == 0
    (run_dir / "summary.json").unlink()  # as if interrupted after its last checkpoint
    shutil.rmtree(sorted((run_dir / "checkpoints").glob("step-*"))[-1])
    r = cli([*base, "optimizer.lr=0.01"], cache_dir)
    assert r.returncode == 2 and "optimizer.lr" in r.stderr
    r = cli([*base, "optimizer.lr=0.01", "resume=force"], cache_dir)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout
    assert any("optimizer.lr" in c for c in summary(run_dir)["config_changes"])
    assert (run_dir / "config.before-step-3.yaml").exists()


# ---- checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, cache_dir, damage, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["optimizer=soap", *SMALL, "regime.precondition_frequency=2"]
    assert run_inprocess([*args, f"run_dir={ref}"], cache_dir) == 0
    assert run_inprocess([*args, f"run_dir={run}"], cache_dir) == 0
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-00000009", "step-00000012"]  # train.keep_checkpoints=2
    (run / "summary.json").unlink()  # not completed: it resumes from the newest checkpoint
    data = sorted((run / "checkpoints" / "step-00000012").glob("*.distcp"))[0]
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    else:
        data.unlink()
    capsys.readouterr()
    assert run_inprocess([*args, f"run_dir={run}"], cache_dir) == 0
    out = capsys.readouterr().out
    assert "step-00000012" in out and "trying the checkpoint before it" in out
    assert "resumed" in out and "at step 9" in out
    a, b = metrics(ref), metrics(run)
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    assert [x.get("eval_loss") for x in a] == [x.get("eval_loss") for x in b]


# ---- bad input ---------------------------------------------------------------------------
def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_adamw_betas_of_one_value(tmp_path, cache_dir):
    r = cli(["optimizer=adamw", "optimizer.betas=[0.9]", f"run_dir={tmp_path}/r"], cache_dir)
    _one_line_error(r, "optimizer.betas")


def test_unwritable_run_dir_is_refused_before_data_preparation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    fresh_cache = tmp_path / "cache"
    r = cli([f"run_dir={blocker}/run"], fresh_cache)
    _one_line_error(r, "not writable", "run_dir")
    assert not fresh_cache.exists()  # nothing was prepared


@pytest.mark.parametrize("override", ["+foo=1", "+train.foo=2", "+optimizer.bar=1"])
def test_plus_keys_outside_the_schema_are_refused(override, tmp_path, cache_dir):
    _one_line_error(cli([override, f"run_dir={tmp_path}/r"], cache_dir), "unknown key")


def test_plus_keys_reach_a_custom_optimizer_class(tmp_path, cache_dir):
    """The documented escape hatch: your own ``_target_`` takes any keyword."""
    r = cli(
        [
            "optimizer._target_=torch.optim.Adam",
            "+optimizer.amsgrad=true",
            "train.max_steps=2",
            f"run_dir={tmp_path}/r",
        ],
        cache_dir,
    )
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("content,words", [(b"", "is empty"), (None, "not a text file")])
def test_empty_or_binary_txt_corpus(tmp_path, cache_dir, content, words):
    f = tmp_path / "corpus.txt"
    binary = (REPO / "tests" / "numerics.py").read_bytes().replace(b"a", b"\x00")
    f.write_bytes(content if content is not None else binary)
    r = cli(["data=local", f"data.paths=[{f}]", f"run_dir={tmp_path}/r"], cache_dir)
    _one_line_error(r, words, str(f))


# ---- cost before commitment --------------------------------------------------------------
def _fake_run(steps: int, data_tokens: int, seconds: float, device: str = "cpu"):
    clock = SimpleNamespace(steps_timed=3, train_seconds=seconds)
    return SimpleNamespace(
        steps=steps,
        step=4,
        tokens_per_step=2048,
        params={"non_embedding": 1_000_000},
        data_info={"train_tokens": data_tokens},
        clock=clock,
        accelerator=SimpleNamespace(device=SimpleNamespace(type=device)),
    )


def test_plan_line_counts_tokens_epochs_and_warns():
    from scripts.trainer.plan import estimate_line, plan_line

    lines = plan_line(_fake_run(8341, 422_000, 3.0))
    assert lines[0].startswith("plan: 8341 steps x 2048 tokens = 17.08M tokens, 17.08 tokens")
    assert "40.48 passes" in lines[0] and "reads its training data 40 times" in lines[1]
    assert len(plan_line(_fake_run(100, 422_000, 3.0))) == 1  # one pass: no warning
    est = estimate_line(_fake_run(8341, 422_000, 3.0))  # 1 s per step: 2.3 h
    assert "1 s per step" in est[0] and "warning: about 2.3 h on a CPU" in est[1]
    assert len(estimate_line(_fake_run(8341, 422_000, 3.0, device="cuda"))) == 1


def test_the_plan_is_printed_before_the_first_step(tmp_path, cache_dir):
    r = cli(["train.max_steps=6", f"run_dir={tmp_path}/r"], cache_dir)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("plan: 6 steps x 512 tokens"), lines[:3]
    assert any(x.startswith("estimate: ") for x in lines)
