"""Iterations and wall-clock to a target loss, across optimizers: ``python -m scripts.report
<runs-dir> [--target LOSS] [--baseline adamw] [--out DIR] [--wandb]``.

``load`` (run directories -> records), ``fit`` (the paper's power law), ``analysis`` (measures, comparison: typed
results), ``tables`` / ``plots`` / ``page`` (rendering), ``write`` (the files)."""

from scripts.measures import crossing
from scripts.report.analysis import Analysis, Comparison, analyse
from scripts.report.fit import Fit, fit_power_law
from scripts.report.load import load_runs
from scripts.report.write import Report, write_report

__all__ = [
    "Analysis",
    "Comparison",
    "Fit",
    "Report",
    "analyse",
    "crossing",
    "fit_power_law",
    "load_runs",
    "write_report",
]
