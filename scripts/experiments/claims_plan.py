"""Which of the paper's claims one GPU could test first: the claims scorecard's
(:mod:`scripts.report.claims`) scopes over a study's experiments (``configs/study/paper.yaml``),
each experiment's estimated H100-hours from its plan (:mod:`scripts.experiments.plan`), and a
greedy order, cheapest addition first. ``make gpu-check`` prints it last;
``python -m scripts.experiments.claims_plan [STUDY]`` alone.
"""

from __future__ import annotations

import sys

from scripts.report.claim_measures import Experiment
from scripts.report.claims import load_claims, scopes


def costs(study: str = "paper", seeds: int = 3) -> list[tuple[float, float, list[str], list[str]]]:
    """The order in which one GPU could test the claims at a study's scale: at each step the
    claims whose missing experiments cost the fewest estimated H100-hours, as ``(hours added,
    hours so far, experiments added, claims testable)``, with ``scripts.reproduce``'s default
    protocol (3 LRs, 4 schedule fractions) and ``seeds`` seeds at each best LR (one seed gives
    no verdict)."""
    import argparse

    from scripts.experiments import study as studies
    from scripts.experiments.plan import budget, plan

    base = argparse.Namespace(
        optimizers=["adamw", "shampoo", "soap"], lrs=[1e-3, 3.16e-3, 1e-2],
        fractions=[0.5, 0.625, 0.75, 0.875], seeds=[0], best_seeds=list(range(1, seeds)),
        fraction_seeds=None,
    )  # fmt: skip
    exps, hours = [], {}
    for e in studies.load(study):
        a = studies.experiment_args(base, e)
        pl = plan(e.preset, a.fractions, e.overrides)
        hours[e.name] = budget(pl, a)[1]
        exps.append(Experiment(e.name, e.role or "", e.reference, {}, pl["model"]))
    groups: dict[frozenset[str], list[str]] = {}
    for c in load_claims():
        for name, scope in scopes(c, [e for e in exps if e.role]):
            groups.setdefault(frozenset(e.name for e in scope), []).append(f"{c.id} ({name})")
    done: set[str] = set()
    out, total = [], 0.0
    while groups:
        key = min(groups, key=lambda k: (sum(hours[n] for n in k - done), len(k), sorted(k)))
        added = sorted(key - done)
        cost = sum(hours[n] for n in added)
        total += cost
        done |= key
        out.append((cost, total, added, groups.pop(key)))
    return out


def first_on_one_gpu(study: str = "paper") -> str:
    """:func:`costs` as lines (``make gpu-check``'s last section)."""
    lines = [f"estimated H100-hours (6N FLOPs per token at 40% of peak; 3 seeds at each best LR) "
             f"of the runs each claim of configs/claims/paper.yaml needs in configs/study/{study}.yaml, "
             "cheapest first (claims whose experiments already ran cost nothing more):"]  # fmt: skip
    for i, (cost, total, added, ids) in enumerate(costs(study), 1):
        new = ", ".join(added) if added else "nothing new"
        lines.append(f"{i}. +{cost:,.0f} h (so far {total:,.0f} h, {total / 24:,.0f} GPU-days) "
                     f"for {new}: {', '.join(ids)}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    print(first_on_one_gpu(argv[0] if argv else "paper"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
