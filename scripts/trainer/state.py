"""What a checkpoint holds, in one ``states`` mapping used for both save and restore, written
with ``torch.distributed.checkpoint`` (every rank writes its own part, no gather on rank 0;
a different number of ranks can read it back).

Layout: ``<run_dir>/checkpoints/step-<N>/`` (DCP files) and ``<run_dir>/checkpoints/latest``
(the name of the newest complete one). A checkpoint is written to ``step-<N>.tmp`` and
renamed when every rank has finished; ``latest`` is then replaced atomically and all but the
newest ``train.keep_checkpoints`` are removed, so a kill at any moment leaves the previous
checkpoint readable, and a checkpoint that cannot be read on resume (a truncated or deleted
file, bad metadata) falls back to the one before it (:func:`restore_latest`).

``states``:

* ``model``: ``get_model_state_dict`` (plain tensors, or FSDP2's ``DTensor`` shards);
* ``optimizer``: :func:`soap.checkpoint.dcp_state` - state keyed by parameter name, each
  rank writing the parameters it owns (the distributed SOAP/Shampoo/Muon) or everything
  (replicated optimizers; DCP writes one copy). FSDP2 with a torch optimizer (``DTensor``
  state) reshards like the model;
* ``trainer``: step, LR schedule, clock, target tracker, eval history, bad-step count, RNG and
  the loader position (rank 0's: every rank computes the same ones);
* ``loader.rank<r>``: a rank's own loader state where it differs per rank (streaming data).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from scripts.trainer.run import Run
from soap.checkpoint import dcp_state, dcp_template, load_dcp_state

DIR, LATEST = "checkpoints", "latest"


class CheckpointError(RuntimeError):
    """An unreadable checkpoint, with a one-line message naming the fix."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that it assumes one process when no process group exists: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        yield


def _blob(obj: Any) -> io.BytesIO:
    return io.BytesIO(pickle.dumps(obj))


def _unblob(b: io.BytesIO) -> Any:
    return pickle.loads(b.getvalue())


def complete(run_dir: Path) -> list[Path]:
    """The complete checkpoint directories, newest first."""
    root = Path(run_dir) / DIR
    return sorted(
        (p for p in root.glob("step-*") if p.is_dir() and "." not in p.name), reverse=True
    )


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory (the ``latest`` pointer's), or None. A pointer
    whose directory is gone falls back to the newest complete one."""
    pointer = Path(run_dir) / DIR / LATEST
    if not pointer.exists():
        return None
    path = Path(run_dir) / DIR / pointer.read_text().strip()
    if path.is_dir():
        return path
    found = complete(run_dir)
    return found[0] if found else None


def save(run: Run) -> Path:
    """Write this step's checkpoint (every rank takes part)."""
    acc, root = run.accelerator, run.run_dir / DIR
    final = root / f"step-{run.step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    states: dict[str, Any] = {
        "model": get_model_state_dict(run.model),
        "optimizer": dcp_state(run.optimizer, run.raw_model),
        "trainer": _blob(run.state_dict()),
    }
    if run.loader.per_rank_state:
        states[f"loader.rank{acc.process_index}"] = _blob(run.loader.state_dict())
    with _quiet():
        dcp.save(states, checkpoint_id=str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / LATEST
        (root / ".latest.tmp").write_text(final.name)
        os.replace(root / ".latest.tmp", pointer)
        keep = max(1, int(run.cfg.train.keep_checkpoints))
        for old in [p for p in root.glob("step-*") if p.name.endswith(".tmp")] + complete(
            run.run_dir
        )[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def restore(run: Run, path: Path) -> None:
    """Load ``path`` into the run (every rank takes part); any number of ranks may have
    written it (the model and the optimizer state reshard)."""
    try:
        reader = dcp.FileSystemReader(str(path))
        metadata = reader.read_metadata()
        rank_key = f"loader.rank{run.accelerator.process_index}"
        states: dict[str, Any] = {
            "model": get_model_state_dict(run.model),
            "optimizer": dcp_template(run.optimizer, run.raw_model, metadata),
            "trainer": io.BytesIO(),
        }
        per_rank = run.loader.per_rank_state
        if per_rank:
            if rank_key not in metadata.state_dict_metadata:
                raise CheckpointError(
                    f"checkpoint {path} holds no loader state for rank "
                    f"{run.accelerator.process_index}: streaming data resumes only with the "
                    "number of processes that wrote it"
                )
            states[rank_key] = io.BytesIO()
        with _quiet():
            dcp.load(states, checkpoint_id=str(path))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP's is a BaseException
        if isinstance(e, CheckpointException):  # one rank's failure, e.g. a truncated file
            e = next(iter(e.failures.values()), e)
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
            "move it away and rerun, or use resume=never with a new run_dir"
        ) from None
    set_model_state_dict(run.model, states["model"])
    load_dcp_state(run.optimizer, run.raw_model, states["optimizer"])
    run.load_state_dict(_unblob(states["trainer"]))
    if per_rank:
        run.loader.load_state_dict(_unblob(states[rank_key]))


def restore_latest(run: Run) -> Path:
    """Restore the newest checkpoint that reads; each unreadable one is named in one line
    and the one before it is tried. Raises ``CheckpointError`` when none reads."""
    found = [p for p in [latest(run.run_dir)] if p is not None]
    found += [p for p in complete(run.run_dir) if p not in found]
    if not found:
        raise CheckpointError(f"{run.run_dir / DIR} holds no complete checkpoint: use resume=never")
    errors = []
    for path in found:
        try:
            restore(run, path)
            return path
        except CheckpointError as e:
            errors.append(str(e))
            if run.is_main:
                print(f"warning: {str(e).split(': move')[0]}; trying the checkpoint before it")
    raise CheckpointError(errors[-1])
