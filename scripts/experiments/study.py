"""Studies: several experiments planned, run and reported side by side (issue 19).

``python -m scripts.reproduce --study NAME [--plan] [--dry-run] [reproduce's options] [overrides]``

A study is ``configs/study/NAME.yaml``: ``experiments``, each a ``name``, an experiment
``preset`` (``configs/experiment``) and optional ``overrides``, ``optimizers`` (instead of the
command's), ``role`` (what the paper's claims scorecard reads it as:
:data:`scripts.report.claims.ROLES`) and ``reference`` (an ablation: the name of an earlier
experiment whose best learning rates it runs at, with its seeds and no sweep or schedule
fractions, as the paper's ablations ran at the tuned settings). Every experiment is one
``scripts.reproduce`` of its preset (LR sweep, schedule fractions, its own report) into
``<out>/<name>/`` (default ``results/runs/study-NAME``), with the study command's options
and overrides; completed runs are skipped, so re-running the command continues. Then the
study report (:mod:`scripts.report.study`) compares the experiments: one row each, savings
against model size and batch size, performance profiles and, when experiments have roles,
the paper's claims scorecard (:mod:`scripts.report.claims`). The experiments are written to
``<out>/study.json`` for the report.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scripts.config import CONFIGS
from scripts.experiments.plan import budget, cpu_minutes, plan, plan_line

STUDIES = CONFIGS / "study"
MIXED = 1.1  # tokens per parameter differing by more than this factor: a confounded study


@dataclass
class Experiment:
    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)
    optimizers: list[str] | None = None  # None: the study command's --optimizers
    role: str | None = None  # for the claims scorecard
    reference: str | None = None  # an ablation at this earlier experiment's best LRs


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
        ref = e.get("reference")
        if ref is not None and ref not in {x.name for x in out}:
            raise SystemExit(
                f"error: {path}: experiment {e['name']!r}: its reference {ref!r} is not an "
                "experiment listed before it"
            )
        opts = e.get("optimizers")
        if opts is not None and (not isinstance(opts, list) or not opts):
            raise SystemExit(f"error: {path}: experiment {e['name']!r}: 'optimizers' is a list")
        out.append(Experiment(
            str(e["name"]), str(e["preset"]), list(e.get("overrides") or []),
            [str(o) for o in opts] if opts else None, e.get("role"), ref,
        ))  # fmt: skip
    return out


def experiment_args(args: argparse.Namespace, e: Experiment) -> argparse.Namespace:
    """The reproduce options an experiment runs with: the command's, its own optimizers, and
    for an ablation one LR per optimizer (its reference's best) and no schedule fractions."""
    a = copy.copy(args)
    if e.optimizers:
        a.optimizers = list(e.optimizers)
    if e.reference:
        a.lrs, a.fractions = a.lrs[len(a.lrs) // 2 : len(a.lrs) // 2 + 1], []
    return a


def lrs_from(args: argparse.Namespace) -> dict[str, float]:
    """``--lr-from DIR``: each optimizer's best LR among DIR's runs (the report's choice:
    :func:`scripts.report.analysis.compare`); one line and exit 2 when one has none. A dry run
    before DIR has runs shows the grid's middle LR."""
    from scripts.report import analyse, load_runs

    runs = load_runs(args.lr_from) if Path(args.lr_from).is_dir() else []
    best: dict[str, float] = {}
    for c in analyse(runs, None).comparisons:
        best |= {r.optimizer: r.best_lr for r in c.rows if r.best_lr is not None}
    out = {}
    for o in args.optimizers:
        if o in best:
            out[o] = best[o]
        elif args.dry_run:
            out[o] = args.lrs[len(args.lrs) // 2]
            print(f"reproduce: {o}: no best LR in {args.lr_from} yet; shown at {out[o]:g}")
        else:
            raise SystemExit(
                f"error: --lr-from {args.lr_from}: no completed {o} run there to take its best "
                "LR from: run that experiment first"
            )
    return out


def experiment_options(e: Experiment, out: Path) -> list[str]:
    """:func:`experiment_args` as ``scripts.reproduce`` options (after the command's: the
    last occurrence of an option wins)."""
    opts = ["--optimizers", *e.optimizers] if e.optimizers else []
    if e.reference:
        opts += ["--lr-from", str(out / e.reference), "--fractions"]
    return opts


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
    runs, hours, minutes = 0, 0.0, 0.0
    per_param = {}
    for e in exps:
        a = experiment_args(args, e)
        pl = plan(e.preset, a.fractions, [*e.overrides, *args.overrides])
        n, h = budget(pl, a)
        print(f"[{e.name}] {plan_line(pl, n, h)}", flush=True)
        runs, hours, minutes = runs + n, hours + h, minutes + cpu_minutes(pl, a)
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
    # A CPU study's time on the machine the rate was measured on (2 cores); a GPU study's
    # would be years of it, so none is printed.
    cpu = f", ~{minutes:.0f} min with {args.jobs} at once on a 2-core CPU" if minutes < 600 else ""
    print(
        f"study {args.study}: {len(exps)} experiments, {runs} runs, ~{hours:.3g} H100-hours in "
        f"all{cpu} (estimates)",
        flush=True,
    )
    if args.plan:
        return 0
    # The options, then "--" and the overrides: an override after a list option (--seeds 1
    # model=x) would otherwise be read as one of its values.
    rest = [a for a in _forwarded(argv) if a not in args.overrides and a != "--"]
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        record = {"study": args.study, "experiments": [vars(e) for e in exps]}
        (out / "study.json").write_text(json.dumps(record, indent=1) + "\n")
    for e in exps:
        cmd = [sys.executable, "-m", "scripts.reproduce", e.preset, "--out", str(out / e.name)]
        cmd += [*rest, *experiment_options(e, out), "--", *args.overrides, *e.overrides]
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
