"""The trainer: learning, logs, resume after SIGKILL, signals, multi-process, faults, configs."""

import os
import shutil
import signal
import sys
import time

import pytest

from scripts.trainer import ConfigError, grad_accum_steps, lr_lambda
from tests.helpers import checkpoint, cli, metrics, run_inprocess, spawn, summary


@pytest.mark.parametrize("optimizer", ["adamw", "soap", "shampoo", "muon"])
def test_each_optimizer_learns(optimizer, tmp_path, cache_dir):
    run_dir = tmp_path / optimizer
    lr = {"adamw": 3e-3, "soap": 3e-3, "shampoo": 3e-3, "muon": 3e-3}[optimizer]
    code = run_inprocess(
        [
            f"optimizer={optimizer}",
            f"optimizer.lr={lr}",
            "train.max_steps=30",
            "train.eval_every=10",
            f"run_dir={run_dir}",
            "regime.precondition_frequency=5",
        ],
        cache_dir,
    )
    assert code == 0
    m = metrics(run_dir)
    first = sum(r["loss"] for r in m[:3]) / 3
    last = sum(r["loss"] for r in m[-3:]) / 3
    assert last < first - 0.5, (first, last)
    s = summary(run_dir)
    assert s["eval_history"][-1]["eval_loss"] < s["eval_history"][0]["eval_loss"]


def test_summary_consistent_with_metrics_and_run_records(tmp_path, cache_dir):
    run_dir = tmp_path / "r"
    assert (
        run_inprocess(
            [
                "optimizer=soap",
                "train.max_steps=12",
                "train.eval_every=4",
                f"run_dir={run_dir}",
                "train.target_loss=100",
            ],
            cache_dir,
        )
        == 0
    )
    s, m = summary(run_dir), metrics(run_dir)
    assert [r["step"] for r in m] == list(range(1, 13))
    evals = [r for r in m if "eval_loss" in r]
    assert [e["step"] for e in evals] == [4, 8, 12]
    assert s["final_eval_loss"] == evals[-1]["eval_loss"]
    assert s["steps"] == 12 and s["tokens"] == 12 * 8 * 64 and s["status"] == "completed"
    assert s["train_seconds"] == pytest.approx(m[-1]["train_seconds"])
    assert s["train_seconds"] == pytest.approx(
        sum(r["time_step"] for r in m[1:]), rel=1e-6
    )  # step 1 is warm-up
    assert s["target_reached"] and s["steps_to_target"] == 4  # reached at the first eval
    for k in (
        "seconds_per_step",
        "optim_seconds_per_step",
        "fwd_bwd_seconds_per_step",
        "tokens_per_second",
        "optimizer_state_bytes",
        "peak_memory_bytes",
        "params_non_embedding",
    ):
        assert s[k] is not None and s[k] > 0, k
    assert {"config.yaml", "env.json", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    env = (run_dir / "env.json").read_text()
    assert "git_sha" in env and "torch" in env and "hardware" in env


def _wait_for_lines(path, n, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len([x for x in path.read_text().splitlines() if x.strip()]) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended early: {proc.returncode}\n{proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    raise AssertionError("timed out waiting for metrics")


COMMON = [
    "optimizer=soap",
    "train.max_steps=16",
    "train.eval_every=4",
    "train.checkpoint_every=5",
    "regime.precondition_frequency=3",
]


def test_sigkill_then_resume_gives_the_same_curve(tmp_path, cache_dir):
    ref = tmp_path / "ref"
    r = cli([*COMMON, f"run_dir={ref}"], cache_dir)
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    proc = spawn([*COMMON, f"run_dir={killed}"], cache_dir)
    _wait_for_lines(killed / "metrics.jsonl", 8, proc)  # past the step-5 checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "latest").exists()
    r = cli([*COMMON, f"run_dir={killed}"], cache_dir)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout
    a, b = metrics(ref), metrics(killed)
    assert [x["step"] for x in b] == list(range(1, 17))
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    assert [x.get("eval_loss") for x in a] == [x.get("eval_loss") for x in b]


def test_sigterm_saves_checkpoint_and_exits_nonzero(tmp_path, cache_dir):
    run_dir = tmp_path / "term"
    proc = spawn([*COMMON, "train.max_steps=400", f"run_dir={run_dir}"], cache_dir)
    _wait_for_lines(run_dir / "metrics.jsonl", 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume" in err.lower()
    s = summary(run_dir)
    assert s["status"] == "interrupted"
    assert checkpoint(run_dir)["trainer"]["step"] == s["steps"] >= 3


def test_two_process_run_matches_one_process(tmp_path, cache_dir):
    args = ["optimizer=adamw", "train.max_steps=6", "train.eval_every=3"]
    one = tmp_path / "one"
    r = cli([*args, f"run_dir={one}"], cache_dir)
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29531",
        "-m",
    ]
    r = cli(
        [*args, "regime.micro_batch=4", f"run_dir={two}"], cache_dir, launcher=torchrun, timeout=400
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    assert summary(two)["world_size"] == 2
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=2e-4, abs=2e-4)
    assert a[-1]["eval_loss"] == pytest.approx(b[-1]["eval_loss"], rel=2e-4)


def test_fsdp_two_process_matches_one_process_and_resumes(tmp_path, cache_dir):
    import torch

    args = [
        "optimizer=adamw",
        "train.max_steps=6",
        "train.eval_every=3",
        "train.checkpoint_every=3",
    ]
    one = tmp_path / "one"
    assert cli([*args, f"run_dir={one}"], cache_dir).returncode == 0
    fsdp = tmp_path / "fsdp"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
    ]
    r = cli(
        [*args, "regime.micro_batch=4", "train.fsdp=true", f"run_dir={fsdp}"],
        cache_dir,
        launcher=torchrun,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = metrics(one), metrics(fsdp)
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=2e-4, abs=2e-4)
    # Each rank wrote its shards; read back, they are the single-process tensors.
    ca, cb = checkpoint(one)["model"], checkpoint(fsdp)["model"]
    assert ca and ca.keys() == cb.keys()
    for k in ca:
        assert ca[k].shape == cb[k].shape
        # Adam on near-zero gradients (rare embedding rows) is sensitive to reduction order.
        torch.testing.assert_close(ca[k], cb[k], rtol=1e-3, atol=5e-4)
    # Kill an FSDP run after its step-3 checkpoint; the resumed run continues the same curve.
    killed = tmp_path / "killed"
    torchrun_kill = [*torchrun[:-2], "--master_port=29535", "-m"]
    proc = spawn(
        [*args, "regime.micro_batch=4", "train.fsdp=true", f"run_dir={killed}"],
        cache_dir,
        launcher=torchrun_kill,
    )
    _wait_for_lines(killed / "metrics.jsonl", 4, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = cli(
        [*args, "regime.micro_batch=4", "train.fsdp=true", f"run_dir={killed}"],
        cache_dir,
        launcher=torchrun,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    c = metrics(killed)
    assert [x["step"] for x in c] == list(range(1, 7))
    for x, y in zip(b, c, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6)


def _poison_training_loss(monkeypatch, bad) -> None:
    """Make the training loss NaN on the forward passes (counted from 1) where ``bad(n)``."""
    import torch

    import models.loss as L

    real = L.lm_loss
    calls = {"n": 0}

    def poisoned(hidden, weight, ids, z, chunk=None):
        ce, loss = real(hidden, weight, ids, z, chunk)
        if torch.is_grad_enabled():  # training forward passes only, not evaluation
            calls["n"] += 1
            if bad(calls["n"]):
                return ce * float("nan"), loss * float("nan")
        return ce, loss

    monkeypatch.setattr(L, "lm_loss", poisoned)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cache_dir, monkeypatch):
    import torch

    import scripts.trainer as T

    _poison_training_loss(monkeypatch, lambda n: n > 7)
    run_dir = tmp_path / "nan"
    code = run_inprocess(
        [
            "optimizer=soap",
            "train.max_steps=20",
            "train.eval_every=100",
            "train.checkpoint_every=5",
            f"run_dir={run_dir}",
        ],
        cache_dir,
    )
    assert code == T.EXIT_DIVERGED
    s = summary(run_dir)
    assert s["status"] == "diverged" and "non-finite" in s["message"]
    ck = checkpoint(run_dir)
    assert ck["trainer"]["step"] == 5
    assert ck["model"] and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_skip_bad_steps_when_allowed(tmp_path, cache_dir, monkeypatch):
    _poison_training_loss(monkeypatch, lambda n: n == 3)
    run_dir = tmp_path / "skip"
    assert (
        run_inprocess(
            ["train.max_steps=6", "train.max_bad_steps=1", f"run_dir={run_dir}"], cache_dir
        )
        == 0
    )
    assert sum(1 for r in metrics(run_dir) if r.get("skipped")) == 1


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["regime.micro_batch=3"], "not divisible"),
        (["model.preset=1b"], "unknown model"),
        (["train.fraction=1.5"], "train.fraction"),
        (["resume=maybe"], "resume"),
    ],
)
def test_bad_configs_raise_before_writing(overrides, match, tmp_path, cache_dir):
    run_dir = tmp_path / "bad"
    with pytest.raises(ConfigError, match=match):
        run_inprocess([*overrides, f"run_dir={run_dir}", "train.max_steps=2"], cache_dir)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.target_loss=abc", "train.target_loss=abc"),
        ("optimizer.lrr=0.1", "optimizer.lrr"),
        ("optimizer=soap optimizer.one_sided=maybe", "one_sided"),
        ("regime.seq_len=1.5", "regime.seq_len"),
        ("data.tokenizer.vocab=10", "data.tokenizer.vocab"),
    ],
)
def test_typed_config_rejects_wrong_types_and_unknown_keys(override, match, tmp_path, cache_dir):
    """The schema (scripts/config.py) fails composition; the CLI says so in one line."""
    from hydra.errors import ConfigCompositionException

    from tests.helpers import compose

    with pytest.raises(ConfigCompositionException):
        compose([*override.split(), f"run_dir={tmp_path}"], cache_dir)
    r = cli([*override.split(), f"run_dir={tmp_path / 'x'}"], cache_dir)
    err = r.stderr.strip()
    assert r.returncode == 2 and err.startswith("error:") and match in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_cli_errors_are_one_line_and_nonzero(tmp_path, cache_dir):
    done = tmp_path / "done"
    assert cli(["train.max_steps=2", f"run_dir={done}"], cache_dir).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    r = cli(["optimizer.lr=-1", f"run_dir={done}"], cache_dir)
    assert (
        r.returncode == 2
        and r.stderr.strip().startswith("error: optimizer.lr=-1")
        and len(r.stderr.strip().splitlines()) == 1
    )
    r = cli(["train.max_steps=2", f"run_dir={done}", "resume=never"], cache_dir)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == before
    r = cli(["optimizer=nonexistent", f"run_dir={tmp_path / 'x'}"], cache_dir)
    assert r.returncode != 0 and "optimizer/nonexistent" in r.stderr
    r = cli(["train.max_steps=2", f"run_dir={done}"], cache_dir)
    assert r.returncode == 0 and "already completed" in r.stdout


def test_fraction_shortens_run_and_schedule(tmp_path, cache_dir):
    run_dir = tmp_path / "half"
    assert (
        run_inprocess(
            [
                "train.max_steps=20",
                "train.fraction=0.5",
                f"run_dir={run_dir}",
                "train.eval_every=5",
            ],
            cache_dir,
        )
        == 0
    )
    m = metrics(run_dir)
    assert len(m) == 10
    f = lr_lambda(10, 0.1, 0.1)
    assert m[-1]["lr"] == pytest.approx(3e-3 * f(10))
    assert summary(run_dir)["full_length_steps"] == 20


def test_batch_arithmetic():
    assert grad_accum_steps(256, 16, 2) == 8
    with pytest.raises(ConfigError, match="not divisible"):
        grad_accum_steps(256, 24, 1)


def test_corrupt_checkpoint_gives_clear_error(tmp_path, cache_dir):
    run_dir = tmp_path / "ck"
    assert cli(["train.max_steps=2", f"run_dir={run_dir}"], cache_dir).returncode == 0
    (run_dir / "summary.json").unlink()  # not completed: it will try to resume
    for f in (run_dir / "checkpoints").glob("step-*/*"):
        f.write_bytes(b"garbage")
    r = cli(["train.max_steps=4", f"run_dir={run_dir}"], cache_dir)
    assert r.returncode == 2 and "unreadable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    shutil.rmtree(run_dir)


def test_torch_compile_runs_and_compile_time_is_warmup(tmp_path, cache_dir):
    common = [
        "optimizer=adamw",
        "train.max_steps=6",
        "train.eval_every=3",
        "train.clock_skip_steps=1",
    ]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert run_inprocess([*common, f"run_dir={eager}"], cache_dir) == 0
    assert run_inprocess([*common, "train.compile=true", f"run_dir={compiled}"], cache_dir) == 0
    s = summary(compiled)
    # Compilation happens in the first step, which the clock reports as warm-up.
    assert s["warmup_seconds"] > s["seconds_per_step"] and s["status"] == "completed"
    # The compiled model trains the same model: same losses as eager (kernel round-off only).
    a, b = metrics(eager), metrics(compiled)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3), (x, y)
    first, last = s["eval_history"][0]["eval_loss"], s["eval_history"][-1]["eval_loss"]
    assert last < first - 0.05, (first, last)
