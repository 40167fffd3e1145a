"""``make gpu-check``'s code runs on CPU in smoke mode, so on the first GPU it only has to
be run (issue 21)."""

from scripts.bench.gpu_check import main, peak_tflops


def test_gpu_check_smoke_mode_runs_every_part(tmp_path, capsys):
    out = tmp_path / "gpu_check.txt"
    assert main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for part in ("## tests", "## optimizer step", "## training step", "## loss memory"):
        assert part in text, part
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
