"""The tuner on PostgreSQL, as the README documents for many machines (issue 30): a throwaway
server (Debian's ``postgresql``; ``.ci/run`` installs it), two workers on one study, one
killed with SIGKILL mid-trial: the study completes with no trial lost or run twice, exactly
as on SQLite. Skipped, with the reason, where no server can be started."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_tune import _configs, _result, _tune, uninterrupted  # noqa: F401 (fixture)


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as the ``postgres`` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no psycopg driver (pip install -e '.[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="soap-bench-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda cmd: subprocess.run(_as_postgres(cmd), capture_output=True, text=True)  # noqa: E731
    r = run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    if r.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    if r.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {r.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_one_killed_mid_trial(tmp_path, postgres_url, uninterrupted):  # noqa: F811
    """Failed before: ``postgresql://`` needed psycopg 3, which nothing installed, and the
    error named no fix."""
    args = [
        f"tune.out={tmp_path}",
        f"tune.storage={postgres_url}",
        "tune.synthetic_seconds=0.4",
        "tune.heartbeat_s=1",
    ]
    a, b = _tune(args, wait=False), _tune(args, wait=False)
    time.sleep(6)  # both are mid-search
    a.send_signal(signal.SIGKILL)
    a.wait()
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0, err[-2000:]
    got = _result(tmp_path)
    for opt, want in _configs(uninterrupted).items():
        assert _configs(got)[opt] == want, opt  # no configuration lost, none completed twice
    assert {o: r["best"] for o, r in got.items()} == {
        o: r["best"] for o, r in uninterrupted.items()
    }
    assert not (tmp_path / "tune.db").exists()  # the study lived in PostgreSQL


def test_a_missing_postgresql_driver_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None\n"
        "from scripts.experiments.tune_storage import storage\n"
        "from scripts.coordinate import SpaceError\n"
        "try:\n"
        f"    storage('postgresql://u@127.0.0.1:1/x', {str(tmp_path)!r}, 5)\n"
        "except SpaceError as e:\n"
        "    print(e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert r.stdout.count("\n") == 1, r.stdout + r.stderr
    assert "pip install -e '.[postgres]'" in r.stdout
