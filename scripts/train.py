"""The training CLI.

``python -m scripts.train model=tiny optimizer=soap regime=cpu train.max_steps=200``
``torchrun --nproc_per_node 8 -m scripts.train experiment=paper_360m_small_batch optimizer=soap``
``python -m scripts.train -m optimizer=adamw,soap optimizer.lr=1e-3,3e-3`` (a Hydra sweep)

Configuration errors (an unknown key, a wrong type, a bad value) print one line naming the
problem and exit 2 before anything is written; the trainer itself lives in
:mod:`scripts.trainer`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.trainer import EXIT_CONFIG, ConfigError, run_training


def _precheck(argv: list[str]) -> None:
    """Compose the config the way Hydra will, so a composition error is one line, not
    Hydra's report (skipped for sweeps, whose comma lists are not single values)."""
    from scripts.config import compose, error_line

    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("hydra.") and not a.startswith("hydra/")]
    if not any(a.startswith("run_dir=") for a in overrides):
        overrides.append("run_dir=.")  # the default needs Hydra's runtime resolver
    try:
        compose(overrides)
    except Exception as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    import scripts.config  # noqa: F401  (registers the schemas)
    from data.sources import DataError
    from scripts.trainer.state import CheckpointError

    _precheck(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path="../configs", config_name="train")
    def _app(cfg: DictConfig) -> float | None:
        try:
            code = run_training(cfg)
        except (ConfigError, DataError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = EXIT_CONFIG
        except Exception as e:  # OmegaConf interpolation and instantiation errors
            from omegaconf.errors import OmegaConfBaseException

            if isinstance(e, (OmegaConfBaseException, ValueError, TypeError)):
                print(f"error: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
                code = EXIT_CONFIG
            else:
                raise
        if code:
            sys.exit(code)
        # Sweepers (e.g. Optuna) minimise the returned value: the final eval loss.
        from scripts.record import RunRecord

        rec = RunRecord.read(Path(cfg.run_dir))
        return rec.final_eval_loss if rec is not None else None

    _app()


if __name__ == "__main__":
    main()
