"""``python -m scripts.tune``: the command; its code is :mod:`scripts.experiments.tune`."""

from scripts.experiments.tune import main

if __name__ == "__main__":
    raise SystemExit(main())
