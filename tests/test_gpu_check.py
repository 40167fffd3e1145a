"""``make gpu-check``'s code runs on CPU in smoke mode, so on the first GPU it only has to
be run (issue 21)."""

from scripts.bench.gpu_check import main, peak_tflops


def test_gpu_check_smoke_mode_runs_every_part(tmp_path, capsys):
    out = tmp_path / "gpu_check.txt"
    from scripts.gpu_check import NOTES

    assert main(["--device", "cpu", "--smoke", "--out", str(out)], notes=NOTES) == 0
    text = out.read_text()
    for part in ("## tests", "## optimizer step", "## training step", "## loss memory",
                 "## claims a single GPU could test first"):  # fmt: skip
        assert part in text, part
    # The claims' order: the 360m large batch's four first, then its variants (issue 29).
    claims = text.split("## claims a single GPU could test first")[1]
    assert "1. +307 h (so far 307 h, 13 GPU-days) for 360m_large_batch: large_iterations" in claims
    assert "2. +119 h" in claims and "one_sided_worse_than_soap" in claims.splitlines()[3]
    assert "FAILED" not in text and "SMOKE" in text
    for opt in ("| adamw |", "| soap |", "| shampoo |"):
        assert text.count(opt) >= 2, opt  # optimizer step and training step tables
    assert "pytest -m gpu: exit 0" in text


def test_gpu_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_peak_table_names_the_gpu():
    import torch

    assert peak_tflops(torch.device("cpu")) == ("cpu", None)


# ---- issue 32: exit codes, names, peers ---------------------------------------------------
def _fake_pytest(monkeypatch, code: int, stdout: str) -> None:
    import subprocess

    from scripts.bench import gpu_check

    real = subprocess.run

    def fake(cmd, *a, **kw):
        if "-m" in cmd and "pytest" in cmd:
            return subprocess.CompletedProcess(cmd, code, stdout=stdout, stderr="")
        return real(cmd, *a, **kw)

    monkeypatch.setattr(gpu_check.subprocess, "run", fake)
    # The measured parts as in smoke mode but without their seconds (the smoke test above
    # runs them): these tests are about how the tests part's outcome reaches the exit code.
    for part in ("optimizer_steps", "train_steps", "loss_bench"):
        monkeypatch.setattr(gpu_check, part, lambda device, smoke, p=part: f"{p}: ok")


def test_gpu_check_fails_when_gpu_tests_fail(tmp_path, monkeypatch, capsys):
    """Failed before the fix: "2 failed, 10 passed" has no "FAILED:", so the check exited 0."""
    out = tmp_path / "g.txt"
    _fake_pytest(
        monkeypatch,
        1,
        "..F.F\nFAILED tests/test_gpu.py::test_a - x\nFAILED tests/test_gpu.py::test_b\n"
        "2 failed, 10 passed in 3.1s\n",
    )
    assert main(["--device", "cpu", "--smoke", "--out", str(out)]) == 1
    text = out.read_text()
    assert "checks: tests FAILED, optimizer step passed, training step passed" in text
    assert "FAILED tests/test_gpu.py::test_a" in text and "2 failed, 10 passed" in text
    assert "FAILED: tests" in capsys.readouterr().err


def test_gpu_check_fails_when_no_gpu_test_ran(tmp_path, monkeypatch):
    """Exit 5 (no test collected) is a failure on a GPU node: the GPU tests went missing."""
    _fake_pytest(monkeypatch, 5, "no tests ran in 0.1s\n")
    assert main(["--device", "cpu", "--smoke", "--out", str(tmp_path / "g.txt")]) == 1


def test_peaks_by_form_factor():
    from scripts.bench.gpu_check import peak_for_name

    assert peak_for_name("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert peak_for_name("NVIDIA H100 PCIe") == 756.0  # was matched as the SXM part
    assert peak_for_name("NVIDIA H100 NVL") == 835.0
    assert peak_for_name("NVIDIA H200") == 989.0
    assert peak_for_name("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_for_name("NVIDIA GH200 480GB") == 989.0
    assert peak_for_name("NVIDIA L4") is None  # unknown: no MFU rather than a guess


def test_cpu_only_torch_on_a_gpu_node_is_named(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CPU-only build" in err and "TORCH_SPEC=torch make install" in err
    assert err.count("\n") == 1


def test_gpu_check_times_the_installed_peers(monkeypatch):
    """The peers' names pass the optimizer filter (they were filtered out before)."""
    from scripts.bench import gpu_check
    from scripts.bench import optimizer as bo

    seen = {}
    monkeypatch.setattr(bo, "bench", lambda shapes, device, args: seen.update(vars(args)) or "")
    import torch

    gpu_check.optimizer_steps(torch.device("cpu"), smoke=False)
    assert {"heavyball SOAP", "pytorch-optimizer SOAP"} <= set(seen["only"])
    assert not seen["no_peers"]
