"""The distributed mode (owner computes, ZeRO-1 style) equals one process to round-off:
2 and 4 gloo processes, DDP-like and FSDP2-like (DTensor) parameters, every optimizer, a mix
of shapes (vocabulary-sized with an identity side, stacked squares, 1-D, 3-D, merged dims),
bf16 parameters, several refreshes and a NaN gradient skipped on every rank."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.dist_worker import CASES as CASES_BY_NAME
from tests.dist_worker import CKPT_CASES, SHAPES
from tests.helpers import REPO, _env
from tests.helpers import port as worker_port
from tests.numerics import assert_has_teeth, assert_within, problem, tolerances

WORKER = str(REPO / "tests" / "dist_worker.py")


def _torchrun(n: int, out: Path, modes: str, port: int) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={n}",
        f"--master_port={worker_port(port)}",
        WORKER,
        str(out),
        modes,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _one_process(out: Path, modes: str) -> None:
    r = subprocess.run(
        [sys.executable, WORKER, str(out), modes],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    one = tmp_path_factory.mktemp("one")
    # perturbed: the problem's sensitivity; ckpt_save: a 1-process checkpoint for 1 -> 2
    _one_process(one, "ddp,perturbed,ckpt_save:ddp")
    runs = {}
    for n, port in ((2, 29611), (4, 29613)):
        d = tmp_path_factory.mktemp(f"w{n}")
        # 4 ranks: also HSDP (2 replicas x 2 shards), and an HSDP checkpoint.
        more = ",ckpt_save:fsdp" if n == 2 else ",hsdp,ckpt_save:hsdp"
        _torchrun(n, d, "ddp,fsdp,mismatch" + more, port)
        runs[n] = d
    return one, runs


def _load(d: Path, name: str, rank: int) -> dict:
    return torch.load(d / f"{name}.rank{rank}.pt")


CASES = [
    f"{c}-{{mode}}-float32" for c in ("soap", "soap_merge", "soap_variants", "shampoo", "muon")
]
CASES += ["soap-{mode}-bfloat16", "muon-{mode}-bfloat16"]


@pytest.mark.parametrize(
    "world,mode", [(2, "ddp"), (2, "fsdp"), (4, "ddp"), (4, "fsdp"), (4, "hsdp")]
)
@pytest.mark.parametrize("case", CASES)
def test_distributed_equals_one_process(results, world, mode, case):
    one, runs = results
    name = case.format(mode=mode)
    ref = _load(one, case.format(mode="ddp"), 0)
    ranks = [_load(runs[world], name, r) for r in range(world)]
    want = ref["params"]
    if "bfloat16" in name:  # bf16 parameters: at most one bf16 ulp of the largest value
        tols = [2.0**-8 * w.float().abs().max().item() for w in want]
    else:  # fp32: calibrated on the problem's own sensitivity (tests/numerics.py)
        perturbed = _load(one, case.format(mode="perturbed"), 0)["params"]
        tols = tolerances(want, perturbed, 1e-5)
        shapes = SHAPES[CASES_BY_NAME[case.split("-")[0]][1]]
        assert_has_teeth(tols, want, problem(shapes, 1)[0])
    assert_within(ranks[0]["params"], want, tols, name)
    for other in ranks[1:]:  # every rank ends with the same values
        assert all(
            torch.equal(a, b) for a, b in zip(ranks[0]["params"], other["params"], strict=True)
        )
    # The state is split, not replicated: the ranks' parts add up to one process's state.
    assert sum(r["state_bytes"] for r in ranks) == ref["state_bytes"]
    assert max(r["state_bytes"] for r in ranks) < ref["state_bytes"]
    # The NaN gradient was skipped once, by its owner.
    assert sum(r["skipped"] for r in ranks) == ref["skipped"] == 1
    assert all(r["comm_bytes"] > 0 for r in ranks)


def test_independent_models_are_refused_not_mixed(results):
    _, runs = results
    for r in range(2):
        msg = (runs[2] / f"mismatch.rank{r}.txt").read_text()
        assert "differ across the 2 ranks" in msg and "distributed='off'" in msg, msg
        assert "\n" not in msg


def test_dtensor_with_distributed_off_is_refused_at_once(tmp_path):
    """A shard given to a mode that would precondition it alone fails in the constructor."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from soap import SOAP

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        mesh = init_device_mesh("cpu", (1,))
        w = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
        with pytest.raises(TypeError, match=r"w is a DTensor.*distributed='auto'"):
            SOAP([{"params": [w], "param_names": ["w"]}], distributed="off")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", CKPT_CASES)
def test_user_checkpoint_resumes_across_fsdp2_and_world_sizes(results, name):
    """``soap.checkpoint.save``/``load`` in user code, FSDP2 (``DTensor``) parameters: a
    2-process checkpoint continues with 2 FSDP2 processes (2 -> 2) and with 1 (2 -> 1), and a
    1-process checkpoint with 2 FSDP2 processes (1 -> 2), each to the parameters of the run
    that was not interrupted, within the problem's calibrated tolerance."""
    one, runs = results
    case = {"soap": "soap", "shampoo": "shampoo", "muon": "muon"}[name]
    ref, perturbed = (_load(one, f"{case}-{m}-float32", 0)["params"] for m in ("ddp", "perturbed"))
    tols = tolerances(ref, perturbed, 1e-5)
    two = runs[2]
    loads = _checkpoint_loads(results)
    for label, d, mode in (
        ("2 -> 2", two, "fsdp"),
        ("2 -> 1", two, "ddp"),
        ("1 -> 2", one, "fsdp"),
    ):
        want = torch.load(d / f"ckpt-{name}-save-{'fsdp' if d == two else 'ddp'}.pt")
        got = torch.load(loads[(str(d), mode)] / f"ckpt-{name}-load-{mode}.pt")
        assert_within(got, want, tols, f"{name} {label}")


@pytest.mark.parametrize("name", CKPT_CASES)
def test_hsdp_checkpoint_resumes_on_fewer_ranks(results, name):
    """A checkpoint of 4 HSDP ranks (2 replicas x 2 shards) continues as FSDP2 on 1 x 2 ranks
    and as one process, to the parameters of the run that was not interrupted."""
    one, runs = results
    ref, perturbed = (_load(one, f"{name}-{m}-float32", 0)["params"] for m in ("ddp", "perturbed"))
    tols = tolerances(ref, perturbed, 1e-5)
    four = runs[4]
    if not (four / f"ckpt-{name}-load-fsdp.pt").exists():
        _torchrun(2, four, "ckpt_load:fsdp", 29621)
        _one_process(four, "ckpt_load:ddp")
    want = torch.load(four / f"ckpt-{name}-save-hsdp.pt")
    assert_within(want, ref, tols, f"{name} 2x2 uninterrupted vs one process")
    for label, mode in (("2x2 -> 1x2", "fsdp"), ("2x2 -> 1x1", "ddp")):
        got = torch.load(four / f"ckpt-{name}-load-{mode}.pt")
        assert_within(got, want, tols, f"{name} {label}")


_LOADED: dict = {}


def _checkpoint_loads(results) -> dict:
    """Run the three loads once for all cases (each writes into the checkpoint's directory)."""
    if not _LOADED:
        one, runs = results
        _torchrun(2, runs[2], "ckpt_load:fsdp", 29617)
        _one_process(runs[2], "ckpt_load:ddp")
        _torchrun(2, one, "ckpt_load:fsdp", 29619)
        _LOADED.update(
            {
                (str(runs[2]), "fsdp"): runs[2],
                (str(runs[2]), "ddp"): runs[2],
                (str(one), "fsdp"): one,
            }
        )
    return _LOADED
