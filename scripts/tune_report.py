"""``python -m scripts.tune_report``: the command; its code is :mod:`scripts.experiments.tune_report`."""

from scripts.experiments.tune_report import main

if __name__ == "__main__":
    raise SystemExit(main())
