"""RunDir directories -> :class:`scripts.record.RunRecord` objects (one shape for every run)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.record import EvalPoint, RunRecord, variant_name


@dataclass
class RunDir:
    """A run directory as the report reads it: its record, env.json and time; crashed runs
    (no summary) get a record built from their config, with ``status="crashed"``. (The
    trainer's live run is :class:`scripts.trainer.run.Run`.)"""

    run_dir: Path
    record: RunRecord
    env: dict[str, Any]
    mtime: float

    def __getattr__(self, name: str) -> Any:  # run.lr, run.optimizer, ... from the record
        return getattr(self.record, name)


def _crashed(d: Path, cfg: dict[str, Any]) -> RunRecord:
    opt = cfg.get("optimizer") or {}
    regime = cfg.get("regime") or {}
    return RunRecord(
        status="crashed",
        optimizer=variant_name(cfg.get("optimizer_name") or "unknown", opt),
        lr=float(opt.get("lr", float("nan"))),
        model=(cfg.get("model") or {}).get("preset", "?"),
        regime=regime.get("name", "?"),
        seed=int(cfg.get("seed", 0)),
        fraction=float((cfg.get("train") or {}).get("fraction", 1.0)),
        precondition_frequency=regime.get("precondition_frequency"),
        eval_history=_eval_from_metrics(d),
    )


def _eval_from_metrics(d: Path) -> list[EvalPoint]:
    p = d / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for ln in p.read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            if "eval_loss" in r:
                out.append(EvalPoint(r["step"], r["eval_loss"], r.get("train_seconds", 0.0)))
    return out


def load_runs(runs_dir: str | Path) -> list[RunDir]:
    """Every run directory below ``runs_dir`` (one with a config.yaml or summary.json)."""
    import yaml

    root = Path(runs_dir)
    dirs = sorted(
        {p.parent for p in root.rglob("config.yaml")}
        | {p.parent for p in root.rglob("summary.json")}
    )
    # The tuner's trials (below a tune.json, e.g. scripts.reproduce --tune full's tune/) are
    # not runs of the comparison: the tuning section reports them (scripts/report/tuning.py).
    tuned = {p.parent for p in root.rglob("tune.json")}
    runs = []
    for d in dirs:
        if "report" in d.relative_to(root).parts or ".sweeps" in d.parts:
            continue
        if any(t in d.parents for t in tuned):
            continue
        rec = RunRecord.read(d)
        if rec is None:
            cfg_path = d / "config.yaml"
            rec = _crashed(d, yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {})
        env_path = d / "env.json"
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
        mtime = (env_path if env_path.exists() else d).stat().st_mtime
        if rec.phase == "robustness":
            # Re-runs of the comparison's own runs under other kernels or thread counts
            # (scripts.experiments.robustness, into <runs>/robustness): counted here they
            # became extra seeds of the same seeds.
            continue
        runs.append(RunDir(d, rec, env, mtime))
    return runs
