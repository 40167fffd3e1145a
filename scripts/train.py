"""The training CLI.

``python -m scripts.train model=tiny optimizer=soap regime=cpu train.max_steps=200``
``torchrun --nproc_per_node 8 -m scripts.train experiment=paper_360m_small_batch optimizer=soap``
``python -m scripts.train -m optimizer=adamw,soap optimizer.lr=1e-3,3e-3`` (a Hydra sweep)

Configuration errors (an unknown key, a wrong type, a bad value) print one line naming the
problem and exit 2 before anything is written; the trainer itself lives in
:mod:`scripts.trainer`. In a sweep, a job that diverges, is misconfigured or crashes is a
result, not the end: it is recorded and the sweep goes on; :class:`scripts.experiments.sweep.SweepSummary` (a Hydra
callback, ``configs/train.yaml``) ends the sweep with one line counting completed, diverged
and failed jobs, writes ``sweep.json`` in Hydra's sweep directory, and exits 1 unless every
job completed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.experiments.sweep import OUTCOMES
from scripts.trainer import EXIT_CONFIG, EXIT_DIVERGED, ConfigError, run_training


def _precheck(argv: list[str]) -> None:
    """Compose the config the way Hydra will, so a composition error is one line, not
    Hydra's report (skipped for sweeps, whose comma lists are not single values)."""
    from scripts.config import compose, error_line

    if any(a in ("-m", "--multirun") for a in argv):
        _check_sweep_run_dir(argv)
        return
    if any(a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("hydra.") and not a.startswith("hydra/")]
    if not any(a.startswith("run_dir=") for a in overrides):
        overrides.append("run_dir=.")  # the default needs Hydra's runtime resolver
    try:
        compose(overrides)
    except Exception as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _check_sweep_run_dir(argv: list[str]) -> None:
    """A sweep whose jobs would share one run directory would train the first job and skip
    (or refuse) the others: say so before starting."""
    for a in argv:
        if a.startswith("run_dir=") and "," not in a and "${" not in a:
            print(
                f"error: {a} is the same for every job of this sweep: drop it (the default "
                "run_dir differs per job) or make it vary, e.g. run_dir=runs/${hydra:job.num}",
                file=sys.stderr,
            )
            sys.exit(EXIT_CONFIG)


def _job(cfg, multirun: bool) -> tuple[int, str | None]:
    """Run one training; the exit code and, for a failure, its one-line reason."""
    from data.config import DataError
    from scripts.trainer.state import CheckpointError

    try:
        return run_training(cfg), None
    except (ConfigError, DataError, CheckpointError) as e:
        line = str(e)
    except Exception as e:  # OmegaConf interpolation and instantiation errors
        from omegaconf.errors import OmegaConfBaseException

        if not (isinstance(e, (OmegaConfBaseException, ValueError, TypeError)) or multirun):
            raise
        line = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    print(f"error: {line}", file=sys.stderr)
    return EXIT_CONFIG, line


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    import scripts.config  # noqa: F401  (registers the schemas)

    _precheck(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path="../configs", config_name="train")
    def _app(cfg: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from scripts.record import RunRecord

        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        code, error = _job(cfg, multirun)
        rec = RunRecord.read(Path(cfg.run_dir)) if code != EXIT_CONFIG else None
        if multirun:
            status = "completed" if code == 0 else "diverged" if code == EXIT_DIVERGED else "failed"
            OUTCOMES.append(
                {
                    "job": HydraConfig.get().job.num,
                    "overrides": list(HydraConfig.get().overrides.task),
                    "run_dir": str(cfg.get("run_dir", "")),
                    "status": status,
                    "exit_code": code,
                    "error": error or (rec.message if rec is not None and code else None),
                    "final_eval_loss": rec.final_eval_loss if rec is not None else None,
                }
            )
        elif code:
            sys.exit(code)
        # Sweepers (e.g. Optuna) minimise the returned value: the final eval loss.
        return rec.final_eval_loss if rec is not None and code == 0 else None

    _app()


if __name__ == "__main__":
    main()
