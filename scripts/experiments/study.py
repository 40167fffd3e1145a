"""Studies: several experiments planned, run and reported side by side (issue 19).

``python -m scripts.reproduce --study NAME [--plan] [--dry-run] [reproduce's options] [overrides]``

A study is ``configs/study/NAME.yaml``: ``experiments``, each a ``name``, an experiment
``preset`` (``configs/experiment``) and optional ``overrides``. Every experiment is one
``scripts.reproduce`` of its preset (LR sweep, schedule fractions, its own report) into
``<out>/<name>/`` (default ``results/runs/study-NAME``), with the study command's options
and overrides; completed runs are skipped, so re-running the command continues. Then the
study report (:mod:`scripts.report.study`) compares the experiments: one row each, savings
against model size and batch size, and performance profiles.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scripts.config import CONFIGS
from scripts.experiments.plan import budget, plan, plan_line

STUDIES = CONFIGS / "study"
MIXED = 1.1  # tokens per parameter differing by more than this factor: a confounded study


@dataclass
class Experiment:
    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)


def load(name: str) -> list[Experiment]:
    """The experiments of ``configs/study/<name>.yaml``; a bad file is one line and exit 2."""
    import yaml

    path = STUDIES / f"{name}.yaml"
    known = sorted(p.stem for p in STUDIES.glob("*.yaml"))
    if not path.exists():
        raise SystemExit(f"error: unknown study {name!r}: choose one of {known}")
    spec = yaml.safe_load(path.read_text()) or {}
    items = spec.get("experiments")
    if not isinstance(items, list) or not items:
        raise SystemExit(f"error: {path}: give a non-empty list 'experiments'")
    presets = {p.stem for p in (CONFIGS / "experiment").glob("*.yaml")}
    out: list[Experiment] = []
    for i, e in enumerate(items):
        if not isinstance(e, dict) or not {"name", "preset"} <= set(e):
            raise SystemExit(f"error: {path}: experiment {i} needs a 'name' and a 'preset'")
        if e["preset"] not in presets:
            raise SystemExit(
                f"error: {path}: experiment {e['name']!r}: unknown preset {e['preset']!r}"
            )
        if e["name"] in {x.name for x in out}:
            raise SystemExit(f"error: {path}: two experiments are named {e['name']!r}")
        out.append(Experiment(str(e["name"]), str(e["preset"]), list(e.get("overrides") or [])))
    return out


def _forwarded(argv: list[str]) -> list[str]:
    """The command's own arguments less ``--study`` and ``--out`` (each experiment gets its
    own output directory)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--study", "--out"):
            skip = True
            continue
        if a.startswith(("--study=", "--out=")):
            continue
        out.append(a)
    return out


def main(args: argparse.Namespace, argv: list[str]) -> int:
    exps = load(args.study)
    out = Path(args.out or f"results/runs/study-{args.study}")
    runs, hours = 0, 0.0
    per_param = {}
    for e in exps:
        pl = plan(e.preset, args.fractions, [*e.overrides, *args.overrides])
        n, h = budget(pl, args)
        print(f"[{e.name}] {plan_line(pl, n, h)}", flush=True)
        runs, hours = runs + n, hours + h
        per_param[e.name] = pl["tokens_per_param"]
    # Tokens per parameter held across sizes (the paper's 20), up to the rounding of steps:
    # otherwise size is confounded with run length, and the study must say it means that.
    if max(per_param.values()) > MIXED * min(per_param.values()):
        each = ", ".join(f"{k}: {v:.3g}" for k, v in per_param.items())
        line = (
            f"study {args.study}: its experiments differ in tokens per non-embedding parameter "
            f"({each}), so size is confounded with run length"
        )
        if not args.allow_mixed_tokens_per_param:
            print(f"error: {line}: hold train.tokens_per_param, or pass "
                  "--allow-mixed-tokens-per-param", file=sys.stderr)  # fmt: skip
            return 2
        print(f"warning: {line} (allowed by --allow-mixed-tokens-per-param)", flush=True)
    print(
        f"study {args.study}: {len(exps)} experiments, {runs} runs, ~{hours:.3g} H100-hours in "
        "all (estimate)",
        flush=True,
    )
    if args.plan:
        return 0
    # The options, then "--" and the overrides: an override after a list option (--seeds 1
    # model=x) would otherwise be read as one of its values.
    rest = [a for a in _forwarded(argv) if a not in args.overrides and a != "--"]
    for e in exps:
        cmd = [sys.executable, "-m", "scripts.reproduce", e.preset, "--out", str(out / e.name)]
        cmd += [*rest, "--", *args.overrides, *e.overrides]
        print("+ " + " ".join(cmd), flush=True)
        if not args.dry_run:
            code = subprocess.call(cmd)
            if code == 2:  # a configuration that cannot start: the next ones would fail alike
                print(f"[{e.name}] could not start (its error is above); study stopped")
                return 2
            if code != 0:
                print(f"[{e.name}] reproduce exited {code}; going on", flush=True)
    if args.dry_run:
        return 0
    return subprocess.call([sys.executable, "-m", "scripts.report.study", str(out)])
