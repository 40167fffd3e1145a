"""``python -m scripts.demo``: the command; its code is :mod:`scripts.experiments.demo`."""

from scripts.experiments.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
