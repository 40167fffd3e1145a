"""Independent training runs at once, so CPU experiments use the whole machine.

Small runs use many cores poorly, so several runs at once, each with ``cpu_count // jobs``
threads, finish sooner than one after another on every core. Measured on the 2-core machine
here (2026-12-04, AMD EPYC, the demo's 107k model, compiled): one run with 2 threads took
72 ms per 4,096-token step; two at once with one thread each, 93 ms each, so 1.55x the
throughput (the demo's default: one run per core). On the old tiny-model demo (Intel Xeon,
2026-12-02) it was a wash (131 s against 137 s).

Two engines, one for each kind of run:

* :class:`InProcess` (the demo): ``jobs`` worker processes from
  :class:`concurrent.futures.ProcessPoolExecutor`, each training one run at a time in-process
  (no start-up per run). ``jobs=1`` trains in this very process, as before.
* :class:`Commands` (``scripts.reproduce --jobs N``): training commands, at most ``jobs``
  at a time. One-process runs (``python -m scripts.train ...``) train inside ``jobs`` workers
  as above, never in the driver (a CPU study's many short runs would otherwise spend ~10 s
  each starting up);
  launched runs (torchrun) run as commands, each in a slot with its own threads and, on a
  GPU node, its own devices (``CUDA_VISIBLE_DEVICES``).

Wall-clock stays honest: each run's seconds are its own, measured while ``jobs`` runs shared
the machine; the run records that (``env.json``: ``hardware.concurrent_runs``) and reports
say so next to the hardware (:func:`scripts.report.write.provenance`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

CONCURRENT_ENV = "SOAP_BENCH_CONCURRENT_RUNS"


def threads_per_run(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def visible_devices() -> list[str]:
    """The GPUs this process may hand out: the entries of a pre-set ``CUDA_VISIBLE_DEVICES``
    (Slurm's, a user's; indices or UUIDs, kept as given), else ``0..n-1`` of the devices
    torch counts (none on a CPU machine)."""
    pre = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pre is not None:
        return [d.strip() for d in pre.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def device_env(jobs: int, slot: int, gpus_per_run: int) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` of ``slot`` of ``jobs``: its own ``gpus_per_run`` of the
    :func:`visible_devices`, a pre-set list subdivided rather than replaced; nothing when
    there is one slot or no GPU."""
    if jobs <= 1 or gpus_per_run <= 0:
        return {}
    devices = visible_devices()
    if not devices:
        return {}
    if jobs * gpus_per_run > len(devices):
        raise ValueError(
            f"{jobs} concurrent runs x {gpus_per_run} GPU(s) each need {jobs * gpus_per_run} "
            f"GPUs and {len(devices)} are visible ({','.join(devices)}): lower --jobs"
        )
    first = slot * gpus_per_run
    return {"CUDA_VISIBLE_DEVICES": ",".join(devices[first : first + gpus_per_run])}


def slot_env(jobs: int, slot: int, gpus_per_run: int = 0, procs: int = 1) -> dict[str, str]:
    """The environment of a run in ``slot`` of ``jobs``: its threads (the slot's cores shared
    by the run's ``procs`` processes), the concurrency it ran under, and - when it uses GPUs -
    its own devices (:func:`device_env`)."""
    threads = max(1, threads_per_run(jobs) // max(1, procs))
    env = {"OMP_NUM_THREADS": str(threads), CONCURRENT_ENV: str(jobs)}
    env.update(device_env(jobs, slot, gpus_per_run))
    return env


def procs_per_run(cmd: list[str]) -> int:
    """Processes a command starts on this node: torchrun's ``--nproc_per_node`` (either
    spelling, ``=`` or not), else 1."""
    for i, a in enumerate(cmd):
        for flag in ("--nproc_per_node", "--nproc-per-node"):
            if a == flag and i + 1 < len(cmd) and cmd[i + 1].isdigit():
                return int(cmd[i + 1])
            if a.startswith(flag + "=") and a.split("=", 1)[1].isdigit():
                return int(a.split("=", 1)[1])
    return 1


NOT_STARTED = -1  # run_commands: a run not started after another could not start
_STOP: Any = None  # in a worker: the pool's stop event (set by InProcess.interrupt)


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """A task in a worker: none starts once the parent was interrupted (tasks already
    handed to a worker are not cancelled by ``shutdown(cancel_futures=True)``)."""
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt
    return fn(*args)


def _worker_init(jobs: int, pids: Any, stop: Any, slots: Any, gpus_per_run: int) -> None:
    """A pool worker: its share of the cores, its own slot's GPUs (before CUDA starts in
    it), the concurrency recorded with its runs, and its pid for
    :meth:`InProcess.interrupt`."""
    import torch

    global _STOP
    _STOP = stop
    os.environ.update(slot_env(jobs, slots.get(), gpus_per_run))
    torch.set_num_threads(threads_per_run(jobs))
    # An idle worker ignores Ctrl-C (the parent decides); a trainer installs its own handler
    # for the length of a run (checkpoint, exit 130).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a killed driver leaves no run going
    pids.put(os.getpid())


def die_with_parent() -> None:
    """This process gets SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere
    nothing): pool workers, and the tuner's training subprocesses (a killed tune worker leaves
    no training behind to write into the directory its retried trial will use)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class InProcess:
    """Runs ``fn(*args)`` calls (one training run each) ``jobs`` at a time in worker
    processes; ``jobs=1`` and ``here``: in this process, at once (the returned future is
    already done)."""

    def __init__(self, jobs: int = 1, here: bool = True, gpus_per_run: int | None = None) -> None:
        """``gpus_per_run``: GPUs each worker gets (default: 1 when there are GPUs)."""
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None
        if jobs > 1 or not here:
            ctx = mp.get_context("spawn")  # fork after torch's threads start is unsafe
            self._pids = ctx.SimpleQueue()
            self._stop = ctx.Event()
            gpus = (1 if visible_devices() else 0) if gpus_per_run is None else gpus_per_run
            device_env(jobs, 0, gpus)  # too few GPUs for the slots: one line, before any start
            slots = ctx.SimpleQueue()  # each worker takes one slot, once, at its start
            for s in range(jobs):
                slots.put(s)
            self._pool = ProcessPoolExecutor(
                jobs,
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(jobs, self._pids, self._stop, slots, gpus),
            )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is not None:
            return self._pool.submit(_guarded, fn, *args)
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the caller reads it from the future
            f.set_exception(e)
        return f

    def interrupt(self) -> None:
        """Ctrl-C for the workers too: each running trainer checkpoints and stops (exit 130);
        no task starts after it (a run that was still setting up runs to its end).
        Sent by the parent, so it also works when only the
        parent got the signal (``kill -INT``)."""
        if self._pool is None:
            return
        self._stop.set()
        while not self._pids.empty():
            pid = self._pids.get()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.interrupt()
        self.close(cancel=kind is not None)


def train(overrides: list[str]) -> int:
    """``python -m scripts.train <overrides>`` in this process: its exit code (an exception
    is a crashed run, exit 1, reported in one line; Ctrl-C is not caught)."""
    from scripts.config import compose
    from scripts.trainer import EXIT_CONFIG, ConfigError, run_training

    where = next((o for o in overrides if o.startswith("run_dir=")), " ".join(overrides))
    try:
        return run_training(compose(overrides))
    except ConfigError as e:  # cannot start: the caller stops the phase on it
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:  # noqa: BLE001 - a crashed run is a result of the sweep
        print(f"run {where} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


PLAIN = [sys.executable, "-m", "scripts.train"]


class Commands:
    """Training commands as futures of their exit codes, at most ``jobs`` at once, each in a
    slot (:func:`slot_env`; ``jobs=1``: the caller's environment). One-process runs
    (``python -m scripts.train ...``) train inside ``jobs`` pool workers (:class:`InProcess`,
    not in the driver: a crash stays a result); launched runs (torchrun) run as commands,
    through ``call`` (default :func:`subprocess.call`). Once a run exits with ``stop_on`` (the
    trainer's configuration exit, 2: it could not start), no further run starts: their
    futures are cancelled."""

    def __init__(
        self,
        jobs: int,
        gpus_per_run: int = 0,
        call: Callable[[list[str], dict[str, str]], int] | None = None,
        stop_on: int = 2,
    ) -> None:
        self.jobs, self.gpus, self.call, self.stop_on = jobs, gpus_per_run, call, stop_on
        self.stopped = threading.Event()
        self._cells: InProcess | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots: queue.Queue[int] = queue.Queue()
        for s in range(jobs):
            self._slots.put(s)
        self._futures: list[Future] = []

    def submit(self, cmd: list[str]) -> Future:
        if self.call is None and cmd[:3] == PLAIN:
            if self._cells is None:
                self._cells = InProcess(self.jobs, here=False)
            f = self._cells.submit(train, cmd[3:])
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.jobs)
            f = self._pool.submit(self._one, cmd)
        self._futures.append(f)
        f.add_done_callback(self._check)
        return f

    def _check(self, f: Future) -> None:
        if not f.cancelled() and f.exception() is None and f.result() == self.stop_on:
            self.stopped.set()
            for g in self._futures:
                g.cancel()

    def _one(self, cmd: list[str]) -> int:
        if self.stopped.is_set():
            raise CancelledError
        s = self._slots.get()
        try:
            if self.stopped.is_set():
                raise CancelledError
            env = dict(os.environ)
            if self.jobs > 1:
                env |= slot_env(self.jobs, s, self.gpus, procs_per_run(cmd))
            return (self.call or _call)(cmd, env)
        finally:
            self._slots.put(s)

    def close(self, cancel: bool = False) -> None:
        if self._cells is not None:
            self._cells.close(cancel)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> Commands:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt) and self._cells:
            self._cells.interrupt()
        self.close(cancel=kind is not None)


def _call(cmd: list[str], env: dict[str, str]) -> int:
    return subprocess.call(cmd, env=env)


def exit_code(f: Future) -> int:
    """A finished command's exit code; :data:`NOT_STARTED` when it was cancelled."""
    try:
        return f.result()
    except CancelledError:
        return NOT_STARTED


def run_commands(
    commands: Iterable[list[str]],
    jobs: int,
    gpus_per_run: int = 0,
    call: Callable[[list[str], dict[str, str]], int] | None = None,
    stop_on: int = 2,
) -> list[int]:
    """Each command's exit code, in order, through :class:`Commands`; those that did not
    start after one could not get :data:`NOT_STARTED`."""
    with Commands(jobs, gpus_per_run, call, stop_on) as ex:
        futures = [ex.submit(c) for c in commands]
        return [exit_code(f) for f in futures]
