"""``python -m scripts.gpu_check``: the command; its code is :mod:`scripts.bench.gpu_check`."""

from scripts.bench.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main())
