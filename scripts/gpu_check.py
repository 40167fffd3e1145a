"""``python -m scripts.gpu_check``: the command; its code is :mod:`scripts.bench.gpu_check`,
and its last section, which of the paper's claims one GPU could test first, is
:mod:`scripts.experiments.claims_plan`'s."""

from scripts.bench.gpu_check import main
from scripts.experiments.claims_plan import first_on_one_gpu

NOTES = [("claims a single GPU could test first", lambda: first_on_one_gpu("paper"))]

if __name__ == "__main__":
    raise SystemExit(main(notes=NOTES))
