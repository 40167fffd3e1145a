"""The field's optimizers under one trainer (issue 31): every lineup member trains, is
SIGKILLed after a checkpoint and resumes to the very same losses, and round-trips its state
dict; Schedule-Free is evaluated on its evaluation weights; a member whose library is
missing stops in one line naming the extra, before anything is written."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import FAST, REPO, _env, compose, metrics

LINEUP = ["adamw", "soap", "shampoo", "muon", "kron", "schedulefree", "lion", "adafactor",
          "ademamix"]  # fmt: skip
SHORT = ["train.max_steps=6", "train.eval_every=2", "train.checkpoint_every=3"]
WORKER = str(REPO / "tests" / "lineup_worker.py")


def _train(args: list[str], cache_dir, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, WORKER, *FAST, f"cache_dir={cache_dir}", *SHORT, *args],
        cwd=REPO,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _train_all(runs: list[list[str]], cache_dir) -> subprocess.CompletedProcess:
    """Several trainings one after another in one process (as the demo runs them): the
    start-up is paid once."""
    code = (
        "import sys, json\n"
        "from scripts.experiments.cells import train\n"
        "sys.exit(max(train(o) for o in json.loads(sys.argv[1])))\n"
    )
    runs = [[*FAST, f"cache_dir={cache_dir}", *SHORT, *r] for r in runs]
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(runs)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _resume_all(names: list[str], root, cache_dir):
    """Per member: an uninterrupted run, and a run SIGKILLed after its 5th step (the
    checkpoint is at 3) then resumed. One process for the references, one per kill, one for
    the resumes."""
    from concurrent.futures import ThreadPoolExecutor

    refs = [[f"optimizer={n}", f"run_dir={root / n / 'ref'}"] for n in names]

    def kill(n: str) -> subprocess.CompletedProcess:
        return _train(
            [f"optimizer={n}", f"run_dir={root / n / 'killed'}"], cache_dir, {"KILL_AT": "5"}
        )

    # Two processes at once (the references' and one kill at a time): the kills are mostly
    # start-up, and each run's losses do not depend on what else runs.
    with ThreadPoolExecutor(2) as pool:
        ref = pool.submit(_train_all, refs, cache_dir)
        kills = {n: pool.submit(kill, n) for n in names}
        r = ref.result()
        assert r.returncode == 0, r.stderr[-3000:]
        for n, f in kills.items():
            r = f.result()
            assert r.returncode == -9, (n, r.returncode, r.stderr[-2000:])
            assert not (root / n / "killed" / "summary.json").exists()
    r = _train_all([[f"optimizer={n}", f"run_dir={root / n / 'killed'}"] for n in names], cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("at step 3 (step-00000003)") == len(names), r.stdout[-3000:]
    return root


# The members whose state or schedule is not torch's plain per-parameter tensors (each found a
# bug when written); the others' kill-and-resume runs in make test-all.
UNUSUAL = ["muon", "kron", "schedulefree", "ademamix"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, cache_dir):
    return _resume_all(UNUSUAL, tmp_path_factory.mktemp("lineup"), cache_dir)


@pytest.fixture(scope="module")
def resumed_plain(tmp_path_factory, cache_dir):
    plain = [n for n in LINEUP if n not in UNUSUAL]
    return _resume_all(plain, tmp_path_factory.mktemp("lineup-plain"), cache_dir)


def _same_losses(name: str, root) -> None:
    a, b = metrics(root / name / "ref"), metrics(root / name / "killed")
    assert [x["step"] for x in b] == list(range(1, 7))
    assert [x["loss"] for x in a] == [x["loss"] for x in b], name
    # Eval losses too, to the bit: PSGD-Kron's once differed by 1 ulp (8.362546921 against
    # 8.362547874) with every training loss equal, until its resume kept its float64 state
    # float64 (scripts/experiments/kron.py).
    assert [x.get("eval_loss") for x in b] == [x.get("eval_loss") for x in a], name


@pytest.mark.parametrize("name", UNUSUAL)
def test_member_resumes_after_sigkill_to_the_same_losses(name, resumed):
    """Found two bugs when written: MuonAdamW's LR schedule stopped reaching its children
    after a resume, and PSGD-Kron's nested state came back under string keys (re-initialised)."""
    _same_losses(name, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in LINEUP if n not in UNUSUAL])
def test_plain_member_resumes_after_sigkill_to_the_same_losses(name, resumed_plain):
    _same_losses(name, resumed_plain)


@pytest.mark.parametrize("name", LINEUP)
def test_member_state_dict_round_trips(name, cache_dir):
    """Three steps, the state dict into a fresh optimizer on copied weights, a fourth step on
    each: the same parameters."""
    from hydra.utils import instantiate

    from models import build_model
    from scripts.trainer.optimizers import training_weights
    from soap import build_optimizer

    cfg = compose([f"optimizer={name}", "run_dir=."], cache_dir)
    gen = torch.Generator().manual_seed(0)

    def model():
        torch.manual_seed(0)
        return build_model("tiny", vocab_size=64, max_seq_len=16)

    def grads(m):
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2

    a = model()
    oa = build_optimizer(a, instantiate(cfg.optimizer))
    training_weights(oa)
    for _ in range(3):
        grads(a)
        oa.step()
    b = model()
    b.load_state_dict(a.state_dict())
    ob = build_optimizer(b, instantiate(cfg.optimizer))
    training_weights(ob)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # as through a file: no shared tensors
    g = torch.Generator().manual_seed(1)
    for m, o in ((a, oa), (b, ob)):
        g.manual_seed(1)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 1e-2
        torch.manual_seed(7)  # PSGD draws its probe vectors from torch's global generator
        o.step()
    for (n, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y), (name, n)


@pytest.mark.parametrize("betas", [None, [0.95, 0.95, 0.9999]])
def test_ademamix_steps_stay_bounded_where_a_gradient_fades(betas, cache_dir):
    """AdEMAMix divides its slow momentum (beta3 0.9999) by sqrt(v): where a gradient fades
    (an output row of a byte rare in training), v must not forget much faster than that
    momentum. The lineup's betas keep every step within a few LRs; beta2 0.95 (the lineup's
    betas until 2026-12-05, when the demo's eval loss rose to 69) does not."""
    from hydra.utils import instantiate

    over = [] if betas is None else [f"optimizer.betas=[{','.join(map(str, betas))}]"]
    cfg = compose(["optimizer=ademamix", "run_dir=.", *over], cache_dir)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = instantiate(cfg.optimizer)([w], lr=1e-3)
    steps = []
    for t in range(600):
        w.grad = torch.ones(1) if t < 300 else torch.full((1,), 1e-4)
        before = w.detach().clone()
        opt.step()
        steps.append(float((w.detach() - before).abs()) / 1e-3)
    bounded = max(steps) < 10
    assert bounded == (betas is None), max(steps)


def test_schedulefree_is_evaluated_on_its_evaluation_weights(tmp_path, cache_dir):
    """The recorded eval loss is the evaluation weights' (it differs from the training
    weights'), and a fresh evaluation of the final checkpoint, switched to its evaluation
    weights, gives it again."""
    from scripts.config import compose as compose_config
    from scripts.trainer import state
    from scripts.trainer.optimizers import eval_weights
    from scripts.trainer.setup import setup
    from scripts.trainer.step import evaluate
    from tests.helpers import run_inprocess

    run_dir = tmp_path / "sf"
    over = [*FAST, f"cache_dir={cache_dir}", *SHORT, "optimizer=schedulefree", f"run_dir={run_dir}"]
    assert run_inprocess(over[len(FAST) + 1 :], cache_dir) == 0
    recorded = metrics(run_dir)[-1]["eval_loss"]
    run = setup(compose_config(over))
    state.restore_latest(run)
    assert run.step == 6
    training = evaluate(run)
    with eval_weights(run.optimizer):
        fresh = evaluate(run)
    assert fresh == pytest.approx(recorded, rel=1e-6, abs=1e-6)
    assert abs(training - recorded) > 1e-4, (training, recorded)
    run.accelerator.end_training()


@pytest.mark.parametrize("name,lib", [("kron", "heavyball"), ("schedulefree", "schedulefree"),
                                      ("lion", "pytorch_optimizer")])  # fmt: skip
def test_a_missing_library_is_one_line_naming_the_extra(name, lib, tmp_path, cache_dir):
    run_dir = tmp_path / "none"
    r = _train([f"optimizer={name}", f"run_dir={run_dir}"], cache_dir, {"BLOCK": lib})
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install -e '.[lineup]'" in lines[0], lines
    assert not run_dir.exists()


def test_a_non_elementwise_member_is_refused_under_fsdp(tmp_path, cache_dir):
    """Under FSDP2 PSGD-Kron or Adafactor would precondition each shard on its own."""
    from scripts.trainer import ConfigError
    from scripts.trainer.optimizers import check_shardable
    from soap import SOAP

    for cls in (torch.optim.Adafactor, __import__("heavyball").PSGDKron):
        with pytest.raises(ConfigError, match="train.fsdp=false"):
            check_shardable(cls, "x", (SOAP,))
    check_shardable(torch.optim.AdamW, "adamw", (SOAP,))
    check_shardable(__import__("schedulefree").AdamWScheduleFree, "sf", (SOAP,))


def test_make_lineups_plan_covers_every_member():
    """Every lineup member has a config file and a half-decade grid of three learning rates
    (the demo's protocol), and the Makefile's default list is the lineup."""
    import re

    from scripts.coordinate import known_optimizers
    from scripts.experiments.demo import FULL
    from scripts.experiments.demo import LINEUP as DEMO_LINEUP

    assert list(DEMO_LINEUP) == LINEUP
    assert set(LINEUP) <= set(known_optimizers())
    for name in LINEUP:
        lrs = FULL["lrs"][name]
        assert len(lrs) == 3 and all(
            abs(b / a - 10**0.5) < 0.01 for a, b in zip(lrs, lrs[1:], strict=False)
        )
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^OPTIMIZERS \?= (.*)$", make, re.M).group(1).split() == LINEUP


def test_lineup_refuses_an_unknown_or_missing_member_before_any_run(monkeypatch, capsys):
    from scripts.experiments.demo import check_optimizers

    with pytest.raises(SystemExit, match="unknown optimizer 'nope'"):
        check_optimizers(["adamw", "nope"])
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    with pytest.raises(SystemExit) as e:
        check_optimizers(["adamw", "schedulefree"])
    assert e.value.code == 2 and "pip install -e '.[lineup]'" in capsys.readouterr().err


def test_every_member_has_a_tuning_space():
    from scripts.coordinate import load_space, overrides
    from scripts.experiments.tune import space_path

    space = load_space(space_path("lineup"), LINEUP)
    for name in LINEUP:
        start = {a.name: a.start for a in space.axes[name]}
        cfg = compose([f"optimizer={name}", "run_dir=.", *overrides(start)], REPO / ".cache")
        assert cfg.optimizer.lr == start["lr"], name
