"""``train.compile=true`` on CPU (what ``make demo`` uses): compiled decoder layers train like
eager ones and save eager checkpoints, and a machine without a C++ compiler gets one line
naming the fix instead of a crash at the first forward."""

from __future__ import annotations

import pytest

from scripts.trainer.checks import cpp_compiler
from tests.helpers import checkpoint, cli, metrics, run_inprocess
from tests.test_train import TWO, _curve_tolerance, _same_curve, _twin_runs

ARGS = ["optimizer=adamw", *TWO]


@pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler for torch.compile on CPU")
def test_compiled_layers_train_like_eager_with_eager_checkpoints(tmp_path, cache_dir, monkeypatch):
    """Compiled kernels fuse and round differently, so the curve is compared within the run's
    own sensitivity (a 1e-7 perturbation of the weights), as for 2 processes against 1."""
    import torch

    base, twin = _twin_runs(ARGS, tmp_path, cache_dir, monkeypatch)
    tol = _curve_tolerance(base, twin)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = tmp_path / "compiled"
        assert run_inprocess([*ARGS, "train.compile=true", f"run_dir={d}"], cache_dir) == 0
        _same_curve(base, metrics(d), tol)
    finally:
        torch.set_num_threads(threads)
    # Compiled layers keep the module names (Module.compile, not a wrapper): the checkpoint
    # is an eager one, so eager runs (and the report's tools) read it.
    assert checkpoint(d)["model"].keys() == checkpoint(tmp_path / "base")["model"].keys()


def test_no_cpp_compiler_is_one_line_naming_the_fix(tmp_path, cache_dir):
    r = cli(
        [*ARGS, "train.compile=true", f"run_dir={tmp_path / 'r'}"],
        cache_dir,
        env={"CXX": "/nonexistent/g++"},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "train.compile=false" in line[0] and "C++ compiler" in line[0], line


def test_demo_compiles_only_where_it_can(monkeypatch, capsys):
    from scripts.experiments import demo
    from scripts.trainer import checks

    monkeypatch.setattr(checks, "cpp_compiler", lambda: "g++")
    assert demo.compile_overrides() == ["train.compile=true"]
    monkeypatch.setattr(checks, "cpp_compiler", lambda: None)
    assert demo.compile_overrides() == []
    assert "stay eager" in capsys.readouterr().out
