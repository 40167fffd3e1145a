"""The main job end to end (shortened) and the Makefile targets."""

import json
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import REPO


def test_quick_demo_end_to_end(tmp_path, cache_dir, capsys):
    from scripts.experiments.demo import main

    out = tmp_path / "demo"
    # In this process (--jobs 1): the pool of workers is tested by test_ctrl_c_stops_concurrent_runs
    assert main(["--quick", "--jobs", "1", "--out", str(out), f"cache_dir={cache_dir}"]) == 0
    printed = capsys.readouterr().out
    assert "| soap |" in printed and "| adamw |" in printed and "| shampoo |" in printed
    assert "adamw's final loss" in printed  # a verdict line per optimizer
    report = out / "report"
    assert (report / "report.md").exists() and (report / "dashboard" / "index.html").exists()
    assert (report / "fits.png").exists() and (report / "summary.csv").exists()
    for opt in ("adamw", "shampoo", "soap"):  # every optimizer: a second seed and a fraction
        runs = {p.name for p in (out / opt).iterdir()}
        assert any(r.endswith("frac1_seed1") for r in runs), runs
        assert any("frac0.5_seed0" in r for r in runs), runs
        # A fraction run is evaluated at its end only (its final loss is all the fit reads);
        # full-length runs keep their curves (the crossings read them).
        evals = {
            r: len(json.loads((out / opt / r / "summary.json").read_text())["eval_history"])
            for r in runs
        }
        assert all((n == 1) == ("frac0.5" in r) for r, n in evals.items()), evals
        # Each run's record says which preset and phase of the protocol produced it.
        tags = {
            r: yaml.safe_load((out / opt / r / "config.yaml").read_text())["protocol"] for r in runs
        }
        assert {t["preset"] for t in tags.values()} == {"demo"}, tags
        assert {t["phase"] for t in tags.values()} >= {"sweep", "seeds", "fractions"}, tags
        recs = {r: json.loads((out / opt / r / "summary.json").read_text()) for r in runs}
        assert all(
            (x["preset"], x["phase"]) == (tags[r]["preset"], tags[r]["phase"])
            for r, x in recs.items()
        )
    # Another fraction into the same --out: only the missing run runs, the rest is kept.
    before = {r: (out / "adamw" / r / "summary.json").stat().st_mtime_ns for r in runs_of(out)}
    argv = ["--quick", "--jobs", "1", "--optimizers", "adamw", "--fractions", "0.25"]
    assert main([*argv, "--out", str(out), f"cache_dir={cache_dir}"]) == 0
    new = set(runs_of(out)) - set(before)
    assert len(new) == 1 and new.pop().endswith("_frac0.25_seed0"), runs_of(out)
    assert all(
        (out / "adamw" / r / "summary.json").stat().st_mtime_ns == m for r, m in before.items()
    )
    capsys.readouterr()
    # The savings' sensitivity to round-off: each best run again, eager (a quick check here).
    from scripts.experiments import robustness
    from scripts.experiments.demo import QUICK

    argv = [str(out), f"cache_dir={cache_dir}", *QUICK["overrides"], "--variants", "eager, 2 threads"]  # fmt: skip
    assert robustness.main(argv) == 0
    printed = capsys.readouterr().out
    table = printed.split("iterations saved against adamw")[1]
    assert "| soap |" in table and "| shampoo |" in table and "eager, 2 threads" in table
    # every seed at each best LR (the demo's statistic is their mean): seeds 0 and 1 here
    assert "seeds per optimizer: 2;" in printed
    assert len(list((out / "robustness").rglob("summary.json"))) == 6
    # ... and the demo's report still reads the demo's runs alone (they were counted as seeds)
    from scripts.report.load import load_runs

    assert len(load_runs(out)) == len(list(out.glob("*/lr*/summary.json")))


def runs_of(out) -> list[str]:
    return sorted(p.name for p in (out / "adamw").iterdir())


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_targets_exist():
    r = subprocess.run(
        [
            "make",
            "-n",
            "install",
            "test",
            "lint",
            "bench-optim",
            "bench-data",
            "gpu-check",
            "demo",
            "reproduce",
            "report",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (
        "pytest" in r.stdout
        and "scripts.demo" in r.stdout
        and "scripts.bench.optimizer" in r.stdout
        and "scripts.gpu_check" in r.stdout
    )


def test_ctrl_c_stops_the_whole_demo_and_restores_handlers(tmp_path, cache_dir, monkeypatch):
    """Ctrl-C in the first cell ends the demo (exit 130), not just that cell; afterwards the
    process's own SIGINT handler is back, so the report (or anything else) can be stopped."""
    import os
    import signal

    import scripts.trainer.loop as T
    from scripts.experiments.demo import main

    real_step, calls = T.train_step, []

    def step_then_ctrl_c(run, batches):
        calls.append(run.run_dir)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(run, batches)

    monkeypatch.setattr(T, "train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "demo"
    assert main(["--quick", "--jobs", "1", "--out", str(out), f"cache_dir={cache_dir}"]) == 130
    assert len({str(d) for d in calls}) == 1, "a second cell started after Ctrl-C"
    summaries = list(out.rglob("summary.json"))
    assert len(summaries) == 1 and '"interrupted"' in summaries[0].read_text()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow  # ~45 s with three busy processes; the Ctrl-C paths: the two tests around it
def test_ctrl_c_between_runs_stops_the_demo_on_a_busy_machine(tmp_path, cache_dir):
    """SIGINT right after the first run's ``completed:`` line, with three busy processes on
    the cores: the demo stops (exit 130) and starts no further run. Each busy process ends by
    itself after 120 s and is killed when the test ends."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO, _env

    busy = [
        subprocess.Popen(
            [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<120: pass"]
        )
        for _ in range(3)
    ]
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.demo",
                "--quick",
                "--jobs",
                "1",
                "--out",
                str(tmp_path / "d"),
                f"cache_dir={cache_dir}",
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        after = []
        for line in proc.stdout:
            if line.startswith("completed:"):
                proc.send_signal(signal.SIGINT)
                break
        t0 = time.time()
        after = proc.stdout.read().splitlines()
        proc.wait(timeout=120)
        assert proc.returncode == 130, proc.stderr.read()[-2000:]
        assert time.time() - t0 < 90
        assert not [x for x in after if x.startswith("completed:")], after
    finally:
        for b in busy:
            b.kill()


def test_ctrl_c_stops_concurrent_runs(tmp_path, cache_dir):
    """With two runs at once, Ctrl-C to the demo alone (``kill -INT``, not the terminal's
    whole process group) stops the runs in its workers the way the trainer stops
    (checkpoint, a summary saying interrupted), starts no other, and exits 130."""
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO, _env

    cmd = [sys.executable, "-m", "scripts.demo", "--quick", "--jobs", "2", "--out",
           str(tmp_path / "d"), f"cache_dir={cache_dir}", "train.max_steps=40"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("estimate:"):  # a worker is 3 steps into a run
            proc.send_signal(signal.SIGINT)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 130, proc.stderr.read()[-2000:]
    started = {p.parent for p in (tmp_path / "d").rglob("config.yaml")}
    status = {d: json_status(d) for d in started}
    assert "interrupted" in status.values(), status
    assert all(s in ("interrupted", "completed") for s in status.values()), status
    assert len(status) <= 2, status  # nothing started after Ctrl-C


def json_status(run_dir) -> str | None:
    import json

    p = run_dir / "summary.json"
    return json.loads(p.read_text())["status"] if p.exists() else None


def test_robustness_counts_a_failed_rerun_as_not_reached(tmp_path):
    """A variant's run that crashed or diverged has no crossing: its saving is "not reached"
    (negative infinity), never a traceback; an AdamW run without a record stops with one line."""
    from scripts.experiments.robustness import savings
    from tests.test_report import make_run

    hist = [{"step": 50, "eval_loss": 3.0, "train_seconds": 5.0},
            {"step": 100, "eval_loss": 2.0, "train_seconds": 10.0}]  # fmt: skip
    adamw = [make_run(tmp_path, "adamw", 1e-2, 1.0, hist, seed=s) for s in (0, 1)]
    soap = [make_run(tmp_path, "soap", 1e-2, 1.0, hist[:1] + [{**hist[1], "step": 60}], seed=0),
            make_run(tmp_path, "soap", 1e-2, 1.0, hist, seed=1, status="diverged")]  # fmt: skip
    assert savings({"adamw": adamw, "soap": soap[:1]})["soap"] == pytest.approx(0.4)
    assert savings({"adamw": adamw, "soap": soap})["soap"] == float("-inf")
    lost = tmp_path / "lost"
    lost.mkdir()
    with pytest.raises(SystemExit, match="did not complete"):
        savings({"adamw": [adamw[0], lost], "soap": soap[:1]})
