"""Tune every hyperparameter that matters, per optimizer, by coordinate descent
(:mod:`scripts.coordinate`), with many workers sharing one resumable Optuna study.

``python -m scripts.tune tune.optimizers=[adamw,soap] tune.space=demo tune.budget=30
tune.workers=2 tune.out=results/tune-demo [training overrides ...]``

Keys (``tune.*``; everything else is a training override given to every trial):
``optimizers``, ``space`` (a file in ``configs/tune`` or a path), ``storage`` (an SQLAlchemy
URL: SQLite by default, PostgreSQL for many machines; or ``journal:<file>`` for Optuna's
journal file storage on a shared filesystem), ``study_name``, ``budget`` (max trials per
optimizer), ``workers`` (processes this command starts), ``out``, ``objective`` (``train``,
or ``synthetic``: a known quadratic bowl for tests), ``heartbeat_s``.

Trials live in one Optuna study per optimizer. Each worker replays the search from the
study's finished trials, enqueues the configurations the search needs next
(``enqueue_trial``) and takes one (``ask``: RDB storage hands a waiting trial to one worker).
Two workers that enqueued the same configuration at once: the trial with the lower number
runs, the other is pruned as a duplicate. A worker killed mid-trial stops sending heartbeats;
the trial is then failed and re-enqueued (``RetryHeartbeatStaleTrialCallback``). Re-running
the command after everything was killed continues where it stopped. The same command on
other machines (or in Slurm array tasks) with the same ``tune.storage`` joins the search.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import coordinate as cd
from scripts.cli import wants_help
from scripts.experiments.cells import device_env, die_with_parent, visible_devices
from scripts.experiments.tune_setting import check_studies, list_keys, setting
from scripts.experiments.tune_storage import storage

REPO = Path(__file__).resolve().parents[2]
EXIT_CONFIG = 2


@dataclass
class TuneConfig:
    optimizers: list[str] = field(default_factory=lambda: ["adamw", "soap"])
    space: str = "demo"
    storage: str | None = None  # default: sqlite:///<out>/tune.db
    study_name: str = "soap-bench"
    budget: int = 30
    workers: int = 1
    out: str = "results/runs/tune"
    objective: str = "train"  # train | synthetic
    heartbeat_s: int = 10
    synthetic_seconds: float = 0.0  # synthetic objective: seconds per trial


def parse(argv: list[str]) -> tuple[TuneConfig, list[str]]:
    from omegaconf import OmegaConf

    mine = [a for a in argv if a.startswith("tune.")]
    rest = [a for a in argv if not a.startswith("tune.")]
    base = OmegaConf.structured(TuneConfig)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([a[len("tune.") :] for a in mine]))
    except Exception as e:
        raise cd.SpaceError(f"{str(e).splitlines()[0]} (tune.* keys: {', '.join(base)})") from None
    tc = TuneConfig(**OmegaConf.to_container(cfg))
    if tc.budget < 1 or tc.workers < 1 or tc.objective not in ("train", "synthetic"):
        raise cd.SpaceError(
            "tune.budget and tune.workers must be >= 1, tune.objective train|synthetic"
        )
    return tc, rest


def space_path(name: str) -> Path:
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") else REPO / "configs" / "tune" / f"{name}.yaml"


# ---- objectives --------------------------------------------------------------------------
def synthetic(config: dict[str, float], seed: int, seconds: float) -> dict[str, Any]:
    """A bowl in log-space with a known optimum at 1e-2 for learning rates and 0.1 for the
    others; ``lr > 0.5`` diverges. Seed noise: +-0.001."""
    time.sleep(seconds)
    if config.get("lr", 0) > 0.5:
        return {"loss": math.inf, "status": "diverged", "seconds": seconds}
    loss = 3.0 + 0.001 * ((seed * 7919) % 3 - 1)
    for name, v in config.items():
        opt = 1e-2 if name.endswith("lr") else 0.1
        loss += 0.1 * math.log10(max(v, 1e-12) / opt) ** 2 if v > 0 else 0.5
    return {"loss": loss, "status": "completed", "seconds": seconds}


def train(config: dict[str, float], seed: int, opt: str, rest: list[str], run_dir: Path) -> dict:
    """One training run (a subprocess, so a crash is a result); its final eval loss."""
    from scripts.record import RunRecord

    cmd = [sys.executable, "-m", "scripts.train", f"optimizer={opt}", *rest]
    fixed = list_keys(opt, tuple(rest))
    cmd += [*cd.overrides(config, fixed), f"seed={seed}", f"run_dir={run_dir}"]
    cmd += ["train.progress=false"]
    # Provenance (scripts/experiments/protocol.py): the tuning phase of its experiment preset.
    preset = next((a.split("=", 1)[1] for a in rest if a.startswith("experiment=")), "none")
    cmd += [f"protocol.preset={preset}", "protocol.phase=tune"]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, preexec_fn=die_with_parent)
    rec = RunRecord.read(run_dir)
    status = rec.status if rec is not None else "crashed"
    if r.returncode and status == "completed":
        status = "crashed"
    ok = r.returncode == 0 and rec is not None and rec.final_eval_loss is not None
    return {
        "loss": rec.final_eval_loss if ok else math.inf,
        "status": status,
        "seconds": time.time() - t0,
        "error": None if ok else (r.stderr.strip().splitlines() or [""])[-1][:300],
    }


# ---- workers -----------------------------------------------------------------------------
def _results(study: Any) -> dict[str, float]:
    from optuna.trial import TrialState

    return {
        t.user_attrs["key"]: t.value
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "key" in t.user_attrs and not t.user_attrs.get("duplicate")
    }


def _duplicate(study: Any, trial: Any) -> bool:
    """Another trial of the same configuration completed, or runs with a lower number."""
    from optuna.trial import TrialState

    k = trial.user_attrs.get("key")
    for t in study.get_trials(deepcopy=False):
        if (
            t.number == trial.number
            or t.user_attrs.get("key") != k
            or t.user_attrs.get("duplicate")
        ):
            continue
        if t.state == TrialState.COMPLETE:
            return True
        if t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number:
            return True
    return False


def _heartbeat(storage: Any, trial_id: int, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        storage.record_heartbeat(trial_id)


def work(tc: TuneConfig, space: cd.Space, rest: list[str], store: Any) -> None:
    """Take trials of every optimizer's study until all searches are done. A worker takes
    whichever optimizer has a configuration waiting, so it is not idle while one search
    waits for its axis' results (the searches are independent)."""
    import optuna

    studies = {
        opt: optuna.create_study(
            storage=store, study_name=f"{tc.study_name}-{opt}", load_if_exists=True
        )
        for opt in tc.optimizers
    }
    while studies:
        ran = False
        for opt in list(studies):
            got = take(tc, space, opt, studies[opt], rest, store)
            if got == "done":
                del studies[opt]
            ran = ran or got == "ran"
            if got == "ran":
                break  # back to the first optimizer: finish searches in order when possible
        if studies and not ran:
            time.sleep(0.5)  # every pending configuration runs elsewhere: wait for results


def take(tc: TuneConfig, space: cd.Space, opt: str, study: Any, rest: list[str], store: Any) -> str:
    """One trial of ``opt`` if one is waiting: ``"ran"``, ``"waiting"`` (its pending
    configurations all run elsewhere) or ``"done"`` (its search is over)."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while True:
        if hasattr(store, "record_heartbeat"):
            fail_stale_trials(study)
        st = cd.replay(
            space.axes[opt], space.threshold, space.noise_seeds, _results(study), tc.budget
        )
        if st.done:
            return "done"
        trials = study.get_trials(deepcopy=False)
        live = {t.user_attrs.get("key") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE) and not t.user_attrs.get("duplicate")}  # fmt: skip
        for config, seed in st.pending:
            if cd.key(config, seed) not in live:
                attrs = {"key": cd.key(config, seed), "config": config, "seed": seed}
                study.enqueue_trial({}, user_attrs=attrs)
        if not any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            return "waiting"
        trial = study.ask()
        if hasattr(store, "record_heartbeat"):  # at once: a trial with none is never stale
            store.record_heartbeat(trial._trial_id)
        if "key" not in trial.user_attrs or _duplicate(study, trial):
            # another worker took the waiting trial first (ask made a fresh one) or the same
            # configuration was enqueued twice: not a result
            trial.set_user_attr("duplicate", True)
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            continue
        run(tc, study, trial, opt, rest, store)
        return "ran"


def run(tc: TuneConfig, study: Any, trial: Any, opt: str, rest: list[str], store: Any) -> None:
    from optuna.exceptions import UpdateFinishedTrialError

    config, seed = trial.user_attrs["config"], trial.user_attrs["seed"]
    stop = threading.Event()
    if hasattr(store, "record_heartbeat"):
        threading.Thread(
            target=_heartbeat, args=(store, trial._trial_id, tc.heartbeat_s / 2, stop), daemon=True
        ).start()
    try:
        if tc.objective == "synthetic":
            res = synthetic(config, seed, tc.synthetic_seconds)
        else:
            run_dir = Path(tc.out) / "runs" / opt / f"trial{trial.number:04d}"
            res = {**train(config, seed, opt, rest, run_dir), "run_dir": str(run_dir)}
    finally:
        stop.set()
    shown = " ".join(f"{k}={v:g}" for k, v in sorted(config.items()))
    try:
        for k, v in res.items():
            trial.set_user_attr(k, v)
        study.tell(trial, res["loss"])
    except UpdateFinishedTrialError:
        # Its heartbeat went stale (this worker stalled past the grace period): another
        # worker failed it and queued a retry, which stands for this configuration.
        print(f"trial {opt} #{trial.number}: {shown} seed={seed} -> dropped (retried elsewhere)")
        return
    print(
        f"trial {opt} #{trial.number}: {shown} seed={seed} -> {res['status']} "
        f"loss {res['loss']:.4f} ({res['seconds']:.1f}s)",
        flush=True,
    )


def summary(
    tc: TuneConfig, space: cd.Space, store: Any, rest: list[str] | None = None
) -> dict[str, Any]:
    """Per optimizer: the best configuration, its loss, and what the search spent."""
    import optuna
    from optuna.trial import TrialState

    real = tc.objective == "train"
    fixed = {o: list_keys(o, tuple(rest or [])) if real else None for o in tc.optimizers}

    src = Path(space.source).resolve()
    shown = src.relative_to(REPO) if src.is_relative_to(REPO) else src
    out: dict[str, Any] = {"space": str(shown), "budget": tc.budget, "optimizers": {}}
    for opt in tc.optimizers:
        study = optuna.load_study(storage=store, study_name=f"{tc.study_name}-{opt}")
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not t.user_attrs.get("duplicate")
        ]
        st = cd.replay(
            space.axes[opt], space.threshold, space.noise_seeds, _results(study), tc.budget
        )
        out["optimizers"][opt] = {
            "best": st.incumbent,
            "loss": st.loss,
            "threshold": st.threshold,
            "moves": st.moves,
            "passes": st.passes,
            "converged": st.done and not st.pending and len(done) < tc.budget,
            "trials": len(done),
            "diverged": sum(t.user_attrs.get("status") != "completed" for t in done),
            "compute_seconds": round(sum(t.user_attrs.get("seconds", 0.0) for t in done), 3),
            "overrides": cd.overrides(st.incumbent, fixed.get(opt)),
            "trials_table": sorted(
                (
                    {
                        "config": t.user_attrs["config"],
                        "seed": t.user_attrs["seed"],
                        "loss": t.value,
                        "status": t.user_attrs.get("status"),
                        "run_dir": t.user_attrs.get("run_dir"),
                    }
                    for t in done
                ),
                key=lambda r: json.dumps(r["config"], sort_keys=True) + str(r["seed"]),
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(list(argv), __doc__):
        return 0
    try:
        tc, rest = parse(argv)
        space = cd.load_space(space_path(tc.space), tc.optimizers)
        store = storage(tc.storage, tc.out, tc.heartbeat_s)
    except cd.SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    digests = {o: setting(tc.objective, space.axes[o], o, rest) for o in tc.optimizers}
    where = tc.storage or str(Path(tc.out) / "tune.db")
    refusal = check_studies(store, tc.study_name, where, digests)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    # Each worker's trainings on its own GPU (a pre-set CUDA_VISIBLE_DEVICES subdivided);
    # this process is worker 0. Nothing changes on a CPU machine.
    gpus = 1 if visible_devices() else 0
    try:
        envs = [device_env(tc.workers, w, gpus) for w in range(tc.workers)]
    except ValueError as e:
        print(f"error: {e}".replace("--jobs", "tune.workers"), file=sys.stderr)
        return EXIT_CONFIG
    os.environ.update(envs[0])
    helpers = [
        subprocess.Popen(
            [sys.executable, "-m", "scripts.tune", *argv, "tune.workers=1"],
            cwd=REPO,
            env={**os.environ, **envs[w]},
        )
        for w in range(1, tc.workers)
    ]
    work(tc, space, rest, store)
    codes = [h.wait() for h in helpers]
    res = summary(tc, space, store, rest)
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(res, indent=2))
    for opt, r in res["optimizers"].items():
        print(
            f"tuned {opt}: {' '.join(r['overrides'])} -> loss {r['loss']} ({r['trials']} trials, "
            f"{r['diverged']} diverged or crashed, {r['compute_seconds']:.0f} s)"
        )
    print(f"written: {out / 'tune.json'}")
    return 1 if any(codes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
