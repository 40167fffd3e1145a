"""``python -m scripts.reproduce``: the command; its code is :mod:`scripts.experiments.reproduce`."""

from scripts.experiments.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main())
