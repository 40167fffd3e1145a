"""The paper's claims as a scorecard: each one reproduced, contradicted or inconclusive.

``python -m scripts.report.claims <study dir>`` (the study report runs it when the study's
experiments have roles: ``make claims``, ``scripts.reproduce --study paper``).

The claims are data (``configs/claims/paper.yaml``): what Vyas et al. (2024) say, their
number, and the measurement that tests it. A study's experiments carry a ``role``
(:data:`ROLES`; ``<study>/study.json``, written by :mod:`scripts.experiments.study`); each
claim is evaluated on every experiment (or pair, or ladder) of the roles it names.

Every measure is computed once per seed: a seed is one replicate of the whole experiment (the
same initialisation and data order for every optimizer and every ablation), so a claim's
values are paired by seed. The verdict (:data:`RULE`) compares the interval ``mean +- standard
deviation`` of those values with the claim's threshold.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.config import CONFIGS
from scripts.measures import INF
from scripts.report.claim_measures import (
    MEASURES,
    PERCENT,
    Evidence,
    Experiment,
    final_loss,
    loss_gap,
)
from scripts.report.load import RunDir
from scripts.report.tables import Table

ROLES = ("large_batch", "small_batch", "frequency", "variant")
CLAIMS = CONFIGS / "claims" / "paper.yaml"
SIDES = ("above", "below", "within")
RULE = (
    "Each measure is computed per seed (a seed is one replicate of the experiment: the same "
    "initialisation and data order for every optimizer), and its interval is mean +- sample "
    "standard deviation over seeds (the range, when a seed never reached the target). "
    "Reproduced: the interval lies wholly on the paper's side of the claim's threshold; "
    "contradicted: wholly on the other side; inconclusive: it contains the threshold, or "
    "there is one seed. Not run: the runs the measure needs are missing."
)


@dataclass
class Claim:
    id: str
    claim: str
    paper: str
    role: list[str]
    measure: str
    args: dict[str, Any]
    side: str
    threshold: float
    relative: str | None = None


def load_claims(path: Path = CLAIMS) -> list[Claim]:
    """The claims file, checked: one line naming the problem (exit 2) for a bad entry."""
    import yaml

    out = []
    for i, c in enumerate((yaml.safe_load(path.read_text()) or {}).get("claims") or []):
        where = f"{path}: claim {c.get('id', i)!r}"
        try:
            claim = Claim(
                **{**c, "role": c["role"] if isinstance(c["role"], list) else [c["role"]]}
            )
        except (TypeError, KeyError) as e:
            raise SystemExit(f"error: {where}: {e}") from None
        if claim.measure not in MEASURES:
            raise SystemExit(
                f"error: {where}: unknown measure {claim.measure!r}: use {sorted(MEASURES)}"
            )
        if claim.side not in SIDES or not set(claim.role) <= set(ROLES):
            raise SystemExit(f"error: {where}: side is one of {SIDES}, role of {ROLES}")
        out.append(claim)
    return out


def load_study(study: Path) -> list[Experiment]:
    """The experiments of ``<study>/study.json`` that have a role (none: no scorecard)."""
    from scripts.report.analysis import analyse
    from scripts.report.load import load_runs

    path = study / "study.json"
    if not path.exists():
        return []
    out = []
    for e in json.loads(path.read_text())["experiments"]:
        if not e.get("role") or not (study / e["name"]).is_dir():
            continue
        runs: dict[str, dict[int, RunDir]] = {}
        for c in analyse(load_runs(study / e["name"]), None).comparisons:
            for r in c.rows:
                runs[r.optimizer] = {x.seed: x for x in c.best_runs(r.optimizer)}
        out.append(Experiment(e["name"], e["role"], e.get("reference"), runs))
    return out


def decide(ev: Evidence, side: str, t: float) -> str:
    """The verdict of :data:`RULE` for one measure."""
    if ev.missing or not ev.values:
        return "not run"
    if ev.parts:  # every cell must hold; one contradicted cell contradicts the claim
        each = [decide(p, side, t) for _, p in ev.parts]
        for v in ("not run", "contradicted", "inconclusive"):
            if v in each:
                return v
        return "reproduced"
    if ev.n < 2 and not ev.deterministic:
        return "inconclusive"
    lo, _, hi = ev.interval()
    if side == "above":
        return "reproduced" if lo > t else "contradicted" if hi < t else "inconclusive"
    if side == "below":
        return "reproduced" if hi < t else "contradicted" if lo > t else "inconclusive"
    inside, outside = -t < lo and hi < t, lo > t or hi < -t
    return "reproduced" if inside else "contradicted" if outside else "inconclusive"


def scopes(claim: Claim, exps: list[Experiment]) -> list[tuple[str, list[Experiment]]]:
    """Where a claim is tested: each experiment of its role; the (large, small) pairs of one
    model for two roles; each reference with its ablations for an ablation role."""
    by = {e.name: e for e in exps}
    if claim.role == ["large_batch", "small_batch"]:
        large = [e for e in exps if e.role == "large_batch"]
        small = {e.model: e for e in exps if e.role == "small_batch"}
        return [
            (f"{e.name} vs {small[e.model].name}", [e, small[e.model]])
            for e in large
            if e.model in small
        ]
    (role,) = claim.role
    if role in ("frequency", "variant"):
        refs = sorted({e.reference for e in exps if e.role == role and e.reference in by})
        return [
            (
                f"{r} and its {role} ablations",
                [by[r], *(e for e in exps if e.role == role and e.reference == r)],
            )
            for r in refs
        ]
    return [(e.name, [e]) for e in exps if e.role == role]


@dataclass
class Verdict:
    claim: Claim
    scope: str
    verdict: str
    evidence: Evidence
    threshold: float  # absolute, in the measure's unit
    note: str = ""


def soap_gain(ref: Experiment) -> float | None:
    """SOAP's mean final-loss gain over AdamW in an experiment (paired by seed)."""
    ev = loss_gap([ref], {"optimizer": "adamw", "versus": "soap"})
    return statistics.fmean(ev.values) if ev.values and math.isfinite(sum(ev.values)) else None


def evaluate(claims: list[Claim], exps: list[Experiment]) -> list[Verdict]:
    out = []
    for c in claims:
        found = scopes(c, exps)
        if not found:
            out.append(
                Verdict(
                    c,
                    "-",
                    "not run",
                    Evidence(missing=f"no experiment with role {'+'.join(c.role)}"),
                    c.threshold,
                )
            )
            continue
        for name, scope in found:
            t, note = c.threshold, ""
            if c.relative == "soap_gain":
                g = soap_gain(scope[0])
                if g is None or g <= 0:  # "close" is measured in SOAP's gain: none here
                    why = "no SOAP and AdamW runs" if g is None else "SOAP did not beat AdamW"
                    ev = Evidence(missing=f"{why} in {scope[0].name}: the threshold has no scale")
                    out.append(Verdict(c, name, "not run" if g is None else "inconclusive", ev, t))
                    continue
                t, note = c.threshold * g, f"threshold {c.threshold:g} x SOAP's gain {g:.3f}"
            ev = MEASURES[c.measure](scope, c.args)
            if c.measure == "wall_clock_saved":
                note = step_share(scope[0], c.args["optimizer"])
            out.append(Verdict(c, name, decide(ev, c.side, t), ev, t, note))
    return out


def step_share(e: Experiment, optimizer: str) -> str:
    """What wall-clock here says about 360m: the optimizer's share of a step's FLOPs at these
    shapes (:func:`scripts.flops.optimizer_flop_share`, the paper's 360m: ~0.2% at
    2M tokens, ~1.6% at 256k) and of its measured time."""
    from omegaconf import OmegaConf

    from scripts.flops import optimizer_flop_share

    runs = list(e.runs.get(optimizer, {}).values())
    if not runs or optimizer not in ("soap", "shampoo"):
        return ""
    parts = []
    cfg_path = runs[0].run_dir / "config.yaml"
    if cfg_path.exists():
        try:
            share = optimizer_flop_share(OmegaConf.load(cfg_path), optimizer)
            parts.append(f"{optimizer}'s step {share:.1%} of the model's FLOPs here")
        except Exception:  # noqa: BLE001 - a note only: an old or partial config has none
            pass
    timed = [r.optim_seconds_per_step / r.seconds_per_step for r in runs
             if r.optim_seconds_per_step and r.seconds_per_step]  # fmt: skip
    if timed:
        parts.append(f"{statistics.fmean(timed):.0%} of its measured step time")
    return ", ".join(parts) + " (paper's 360m: ~0.2% at 2M, ~1.6% at 256k)" if parts else ""


def _value(v: Verdict) -> str:
    ev = v.evidence
    if ev.missing or not ev.values:
        return ev.missing or "-"
    lo, m, hi = ev.interval()
    pct = v.claim.measure in PERCENT
    f = (
        (lambda x: "never" if x == -INF else f"{100 * x:+.1f}%")
        if pct
        else (lambda x: f"{x:+.3f}" if v.claim.measure != "memory_ratio" else f"{x:.2f}x")
    )
    seeds = "" if ev.deterministic else f" ({ev.n} seed{'s' if ev.n != 1 else ''})"
    if ev.deterministic:
        return f(m) + seeds
    mid = "mixed" if math.isnan(m) else f(m)
    return f"{mid} [{f(lo)}, {f(hi)}]{seeds}"


def _threshold(v: Verdict) -> str:
    t = v.threshold
    s = (
        f"{100 * t:g}%"
        if v.claim.measure in PERCENT
        else f"{t:.3g}" + ("x" if v.claim.measure == "memory_ratio" else "")
    )
    return {"above": "> ", "below": "< ", "within": "within +-"}[v.claim.side] + s


def table(vs: list[Verdict]) -> Table:
    rows = []
    for v in vs:
        notes = "; ".join(
            x
            for x in (
                v.note,
                *(f"{n}: {_value(Verdict(v.claim, '', '', p, 0))}" for n, p in v.evidence.parts),
            )
            if x
        )
        rows.append(
            [
                v.claim.claim,
                v.claim.paper,
                v.scope,
                _value(v),
                _threshold(v),
                v.verdict.upper() if v.verdict == "contradicted" else v.verdict,
                notes,
            ]
        )
    return Table(
        "The paper's claims",
        [
            "claim",
            "paper",
            "tested on",
            "ours: mean [interval] (seeds)",
            "threshold",
            "verdict",
            "notes",
        ],
        rows,
    )


def tally(vs: list[Verdict]) -> str:
    counts = {
        k: sum(v.verdict == k for v in vs)
        for k in ("reproduced", "contradicted", "inconclusive", "not run")
    }
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" (of {len(vs)} verdicts)"


def scorecard(study: Path) -> tuple[list[Verdict], Table, Table] | None:
    """The study's scorecard and its ablations' table, or None when no experiment has a role."""
    exps = load_study(study)
    if not exps:
        return None
    vs = evaluate(load_claims(), exps)
    return vs, table(vs), ablation_table(exps)


def ablation_table(exps: list[Experiment]) -> Table:
    """The ablations' final losses beside their reference's, each at its best (or the
    reference's best) LR, over seeds: what the frequency and variant claims read."""
    from scripts.report.analysis import Interval

    rows = []
    by = {e.name: e for e in exps}
    refs = {e.reference for e in exps if e.reference}
    for e in exps:
        if e.name not in refs and not e.reference:
            continue
        src = by.get(e.reference or "", e)  # an ablation's AdamW is its reference's
        base = Interval([final_loss(r) for r in src.runs.get("adamw", {}).values()])
        for o, runs in sorted(e.runs.items()):
            iv = Interval([final_loss(r) for r in runs.values()])
            run = next(iter(runs.values()), None)
            gap = base.mean - iv.mean if base.n and iv.n else None
            pre = o.startswith(("soap", "shampoo"))  # AdamW's runs ignore the frequency
            rows.append([e.name, o, str(e.frequency(o) or "-") if pre else "-", f"{run.lr:g}" if run else "-",
                         f"{iv.mean:.4f} ± {iv.spread:.3f}" if iv.spread is not None else f"{iv.mean:.4f}",
                         str(iv.n), f"{gap:+.4f}" if gap is not None and math.isfinite(gap) else "-"])  # fmt: skip
    return Table("Final losses of the ablations and their references (mean ± std over seeds)",
                 ["experiment", "optimizer", "frequency", "lr", "final loss", "seeds",
                  "AdamW's final loss minus this"], rows)  # fmt: skip


def to_json(vs: list[Verdict]) -> list[dict]:
    return [
        {
            "id": v.claim.id,
            "claim": v.claim.claim,
            "paper": v.claim.paper,
            "scope": v.scope,
            "verdict": v.verdict,
            "values": v.evidence.values,
            "missing": v.evidence.missing,
            "interval": list(v.evidence.interval()) if v.evidence.values else None,
            "side": v.claim.side,
            "threshold": v.threshold,
            "note": v.note,
        }
        for v in vs
    ]


def main(argv: list[str] | None = None) -> int:
    from scripts.cli import wants_help

    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv, __doc__):
        return 0
    if not argv or not Path(argv[0]).is_dir():
        print(
            "error: give a study directory whose study.json has roles (make claims)",
            file=sys.stderr,
        )
        return 2
    got = scorecard(Path(argv[0]))
    if got is None:
        print(
            f"error: {argv[0]}: no experiment with a role (configs/study/claims.yaml has them)",
            file=sys.stderr,
        )
        return 2
    vs, t, abl = got
    print(f"{t.markdown()}\n\n{tally(vs)}\n\n{RULE}\n\n{abl.markdown()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
