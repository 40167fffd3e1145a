"""The tuner's study storage: Optuna's RDB storage (SQLite by default, any SQLAlchemy URL) or
its journal file storage, opened with heartbeats so a killed worker's trial is retried."""

from __future__ import annotations

import contextlib
import functools
import random
import time
import warnings
from pathlib import Path
from typing import Any

from scripts import coordinate as cd


def storage(url: str | None, out: str | Path, heartbeat_s: int) -> Any:
    """The study's storage at ``url`` (default: SQLite ``<out>/tune.db``), heartbeats every
    ``heartbeat_s`` seconds, opened (one line naming the URL when it cannot be)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    url = url or f"sqlite:///{Path(out).resolve() / 'tune.db'}"
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url[len("journal:") :]))
        Path(out).mkdir(parents=True, exist_ok=True)
        for attempt in range(10):
            try:
                store = _storage_class()(
                    url,
                    engine_kwargs={"connect_args": {"timeout": 60}}
                    if url.startswith("sqlite")
                    else None,
                    heartbeat_interval=heartbeat_s,
                    grace_period=3 * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
                break
            except Exception as e:
                if not _lost_schema_race(e) or attempt == 9:
                    raise
                time.sleep(0.2 + 0.3 * random.random())  # the winner finishes meanwhile
        if url.startswith("sqlite"):
            _serialise_sqlite(store.engine)
        return store
    except Exception as e:
        msg = str(e).splitlines()[0][:200]
        if _missing_driver(e) and url.startswith("postgresql"):
            raise cd.SpaceError(
                f"tune.storage={url} needs a PostgreSQL driver (psycopg), which is not "
                "installed: pip install -e '.[postgres]'"
            ) from None
        raise cd.SpaceError(
            f"tune.storage={url} cannot be opened ({type(e).__name__}: {msg})"
        ) from None


def _missing_driver(e: BaseException) -> bool:
    """SQLAlchemy could not import the URL's database driver (Optuna rewords that error)."""
    while e is not None:
        if isinstance(e, ImportError) or "Failed to import DB access module" in str(e):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def _lost_schema_race(e: Exception) -> bool:
    """Whether opening failed because another worker was creating the same new database's
    schema: Optuna checks for each table (and the version rows) and then creates it, so two
    workers starting together both create, and the slower one's ``CREATE TABLE`` or version
    row fails ("table ... already exists", IntegrityError; PostgreSQL: DuplicateTable). Seen
    with two workers in CI and with six here on most tries. Retrying is safe: creation skips
    what exists."""
    text = type(e).__name__ + str(e)
    return "IntegrityError" in text or "already exists" in text or "DuplicateTable" in text


@functools.cache
def _storage_class() -> type:
    from optuna.storages import RDBStorage

    class Storage(RDBStorage):
        """Optuna's RDB storage, where a running trial that never sent a heartbeat is stale
        too once its grace period has passed since it started. Optuna skips such trials, so a
        worker killed between taking a trial (``ask``) and its first heartbeat left it running
        for ever and the search waited on it (seen once in CI under load)."""

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            from datetime import datetime, timedelta

            from optuna.storages._rdb import models
            from optuna.trial import TrialState

            stale = super()._get_stale_trial_ids(study_id)
            grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
            now = datetime.now()  # the clock that stamped datetime_start
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                if t._trial_id in stale or t.datetime_start is None:
                    continue
                if now - t.datetime_start <= grace:
                    continue
                with contextlib.closing(self.scoped_session()) as session:
                    beat = models.TrialHeartbeatModel.where_trial_id(t._trial_id, session)
                if beat is None:
                    stale.append(t._trial_id)
            return stale

    return Storage


def _serialise_sqlite(engine: Any) -> None:
    """Make each SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``,
    SQLAlchemy's recipe for pysqlite). Otherwise the read and the write of Optuna's "take a
    waiting trial" run unlocked, and two workers took the same trial (seen here with two
    processes). Server databases (PostgreSQL) lock the row themselves."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made so far lack the hooks
