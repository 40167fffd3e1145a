"""wandb logging (offline mode: no network, files written locally for `wandb sync`)."""

import pytest

from tests.helpers import run_inprocess


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_trainer_logs_to_wandb_offline(tmp_path, cache_dir, offline):
    run_dir = tmp_path / "wb"
    assert (
        run_inprocess(
            ["train.max_steps=4", "train.eval_every=2", f"run_dir={run_dir}", "wandb.mode=offline"],
            cache_dir,
        )
        == 0
    )
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_report_uploads_to_wandb_offline(tmp_path, offline):
    from scripts.report import write_report
    from tests.test_report import power_law_runs

    power_law_runs(tmp_path)
    res = write_report(tmp_path, command="test", wandb_upload=True)
    runs = list((res.out / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
