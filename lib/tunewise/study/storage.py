"""Where studies live: one storage URL (or none) -> an Optuna storage, opened fail-fast.

- No URL: Optuna's journal file at ``<run_dir>/study.journal``. Several worker processes
  on one machine can share it (each append takes a lock file; SQLite with several writers
  hits "database is locked"), and optuna-dashboard opens it as is. A path ending in
  ``.journal`` or ``.log`` is a journal file too.
- ``sqlite:///``, ``postgresql://``, ``mysql://`` (optionally ``+driver``): an RDB storage
  with a heartbeat, so a killed worker's trial is failed and retried (up to 3 times). Optuna
  records one every HEARTBEAT_INTERVAL_S and fails a trial whose last one is older than
  GRACE_PERIOD_S when a worker next checks (at each slot claim); the failed trial gets a
  ``fail_reason`` saying so, and ``lost_heartbeats`` tells a progress line what it waits for.
  PostgreSQL is the tested server for several machines (``pip install 'psycopg[binary]'``).

Outages: a call that fails for want of a connection is retried with backoff for up to
``retry_s`` (``$TUNEWISE_RETRY_S``, default 20 s); if the server is still gone, the storage
is declared lost (``StorageLost``, one line) and every later call fails at once, so the
worker stops without writing half of anything. Finished trials are already committed; the
trial in flight stays RUNNING and is failed and queued again by the next worker.

Several workers share a study's ``n_trials`` exactly: ``slot_lock(study)`` is the lock a
worker holds while it counts the trials finished and running and claims the next one (a
lock file (filelock) next to a journal or SQLite file, a PostgreSQL advisory lock, a MySQL named lock).

Credentials stay out of notebooks and logs: ``${VAR}`` in a URL is read from the
environment, ``TUNEWISE_STORAGE`` supplies the whole URL when none is given, and every
message shows ``redact(url)``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import re
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from filelock import FileLock
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from tunewise.errors import ConfigError, SetupError, did_you_mean
from tunewise.records import FAIL_REASON_KEY, WORKER_KEY, storage_of
from tunewise.study.journal import GuardedJournalBackend

ENV_VAR = "TUNEWISE_STORAGE"
RETRY_ENV_VAR = "TUNEWISE_RETRY_S"
JOURNAL_NAME = "study.journal"
JOURNAL_SUFFIXES = (".journal", ".log")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 120
MAX_RETRY = 3
HEARTBEAT_LOST = "heartbeat lost"  # how a heartbeat-failed trial's fail_reason starts
CONNECT_TIMEOUT_S = 5
RETRY_S = 20.0  # how long a lost connection is retried before the storage is declared lost
FIRST_BACKOFF_S = 0.5  # then doubling, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0
LOCK_SUFFIX = ".slots.lock"
_SCHEMA_TRIES = 5
_LOCK_POLL_S = 0.01

_log = logging.getLogger(__name__)

# pip package for a missing DB driver module (ModuleNotFoundError.name -> what to install).
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StorageLost(SetupError):
    """The storage went away mid-study and did not come back within the retry window."""


def open_storage(
    url: str | None,
    run_dir: str | Path,
    *,
    retry_s: float | None = None,
    heartbeat_s: int = HEARTBEAT_INTERVAL_S,
    grace_s: int = GRACE_PERIOD_S,
    must_exist: bool = False,
) -> BaseStorage:
    """The storage for ``url`` (None/"" -> $TUNEWISE_STORAGE -> the run's journal file).

    Raises ConfigError for a URL tunewise does not accept and SetupError (one line, URL
    redacted) when the storage cannot be opened or reached: at once, never retried. On an
    RDB storage, later calls ride out an outage of up to ``retry_s`` seconds (default
    $TUNEWISE_RETRY_S or RETRY_S); ``heartbeat_s``/``grace_s`` set Optuna's heartbeat.
    ``must_exist``: a journal or SQLite file that is not there is a ConfigError, not a new
    empty storage (for reading studies that should already be somewhere).
    """
    url = expand_env(url or os.environ.get(ENV_VAR) or "") or str(Path(run_dir) / JOURNAL_NAME)
    if must_exist:
        _check_exists(url)
    if "://" not in url:
        if url.endswith(JOURNAL_SUFFIXES):
            return _journal(Path(url).expanduser())
        hint = f" (did you mean 'sqlite:///{url}'?)" if url.endswith(SQLITE_SUFFIXES) else ""
        raise ConfigError(f"storage {url!r} is not a URL or a journal file{hint}. {_allowed()}")
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in RDB_SCHEMES:
        raise ConfigError(
            f"storage scheme {scheme!r} is not supported{did_you_mean(scheme, RDB_SCHEMES)}. "
            + _allowed()
        )
    return _rdb(url, scheme, _retry_s(retry_s), heartbeat_s, grace_s)


def _check_exists(url: str) -> None:
    if "://" in url and not url.lower().startswith("sqlite:///"):
        return  # a server: whether it holds the study is asked of it
    path = Path(url[len("sqlite:///"):] if "://" in url else url).expanduser()
    if not path.is_file():
        raise ConfigError(f"storage {url}: no such file; allowed: an existing .journal or SQLite file, "
                          "or a database URL")


def _retry_s(retry_s: float | None) -> float:
    if retry_s is not None:
        return float(retry_s)
    raw = os.environ.get(RETRY_ENV_VAR)
    if not raw:
        return RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"{RETRY_ENV_VAR}={raw!r} is not allowed; allowed: seconds >= 0")
    return value


def expand_env(url: str) -> str:
    """``url`` with each ``${VAR}`` replaced from the environment (ConfigError if unset)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"storage URL refers to ${{{name}}} but the environment variable {name} "
                "is not set: export it before starting (keeps credentials out of notebooks)"
            )
        return os.environ[name]

    return _ENV_REF.sub(value, url)


def redact(url: str) -> str:
    """``url`` with its password masked: ``postgresql://user:***@host/db``."""
    netloc = urlsplit(url).netloc
    userinfo, _, hostport = netloc.rpartition("@")
    if ":" in userinfo:
        url = url.replace(netloc, userinfo.split(":", 1)[0] + ":***@" + hostport, 1)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def has_literal_secret(url: str | None) -> bool:
    """Whether ``url`` itself holds a credential (a password or ``?password=`` written out,
    not a ``${VAR}`` reference that is read from the environment when the storage opens)."""
    if not url or "://" not in url:
        return False
    secrets = [urlsplit(url).password or ""]
    secrets += re.findall(r"(?i)[?&]password=([^&]*)", url)
    return any(s and not re.fullmatch(r"(?:\$\{[A-Za-z_][A-Za-z0-9_]*\})+", s) for s in secrets)


def shareable(url: str | None) -> str | None:
    """``url`` as it may be written to a file others read: unchanged when it holds no
    credential of its own (``${VAR}`` references stay, so the file still works for someone
    with the same variable set), else redacted."""
    return redact(url) if has_literal_secret(url) else url


def for_kernel(url: str | None) -> tuple[str | None, dict[str, str]]:
    """What to write into a notebook for storage ``url``, and what the kernel's environment
    must hold for it: a URL with a password written out travels as ``${TUNEWISE_STORAGE}``
    (the notebook can be run again by anyone who sets that variable), every other value as is."""
    if not has_literal_secret(url):
        return url, {}
    return "${" + ENV_VAR + "}", {ENV_VAR: str(url)}


def label(url: str | None, run_dir: str | Path) -> str:
    """Where a study lives, safe to show: the URL with ``${VAR}`` expanded and the
    password masked (the reference itself when the variable is not set here), or the
    run's journal file."""
    url = url or os.environ.get(ENV_VAR)
    if not url:
        return str(Path(run_dir) / JOURNAL_NAME)
    try:
        url = expand_env(url)
    except ConfigError:
        pass
    return redact(url)


def _allowed() -> str:
    return (
        "Allowed: nothing (a journal file in the run folder), a file path ending in "
        + " or ".join(JOURNAL_SUFFIXES)
        + ", sqlite:///PATH, postgresql://USER:${PASSWORD}@HOST/DB"
        + ", mysql://USER:${PASSWORD}@HOST/DB"
    )


def _journal(path: Path) -> JournalStorage:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A torn last record is cut (with a warning) and a broken one named, before Optuna
        # reads the file; appends never glue onto a torn tail (journal.py).
        return JournalStorage(GuardedJournalBackend(str(path)))
    except OSError as exc:
        raise SetupError(f"cannot open journal storage {path}: {exc.strerror or exc}") from None


def _rdb(url: str, scheme: str, retry_s: float, heartbeat_s: int, grace_s: int) -> RDBStorage:
    _check_driver(url)
    engine_kwargs: dict = {}
    if scheme != "sqlite":
        # Without this, an unreachable server hangs for the OS TCP timeout (minutes).
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        # A pooled connection that died with a restarted server is replaced, not used.
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(1, _SCHEMA_TRIES + 1):
        try:
            if scheme == "sqlite":
                _make_sqlite_parent(url)
            with warnings.catch_warnings():
                # Heartbeat and its retry callback are flagged experimental; we rely on them.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _RetryingRDBStorage(
                    url,
                    retry_s,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s,
                    heartbeat_stale_trial_callback=_RetryStaleTrial(max_retry=MAX_RETRY),
                )
        except Exception as exc:  # any driver/DB error: one clear line instead of a traceback
            if attempt < _SCHEMA_TRIES and _is_schema_race(exc):
                # Workers opening a new database at once race to create Optuna's tables:
                # the loser finds them made and tries again.
                time.sleep(0.1 + 0.4 * random.random())
                continue
            raise SetupError(f"cannot open storage {redact(url)}: {_one_line(exc, url)}") from None
    raise AssertionError("not reached")


def _is_schema_race(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate key" in text


def _check_driver(url: str) -> None:
    """SetupError naming the package to install when the URL's DB driver is missing."""
    try:
        sqlalchemy.engine.make_url(url).get_dialect().import_dbapi()
    except ModuleNotFoundError as exc:
        package = _DRIVER_PACKAGES.get(exc.name or "", exc.name)
        raise SetupError(
            f"cannot open storage {redact(url)}: its database driver is not installed "
            f"(no module {exc.name!r}); install it with: pip install '{package}'"
        ) from None
    except Exception as exc:  # malformed URL or unknown +driver
        raise ConfigError(f"storage URL {redact(url)} is invalid: {_one_line(exc, url)}") from None


def _make_sqlite_parent(url: str) -> None:
    """SQLite creates its file but not the folder it goes in."""
    database = sqlalchemy.engine.make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _one_line(exc: BaseException, url: str) -> str:
    """The driver's own message (not SQLAlchemy's wrapper), first line, password masked."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = lines[0] if lines else type(cause).__name__
    password = urlsplit(url).password
    # Drivers rarely echo the password; masking a very short one would garble the text.
    return text.replace(password, "***") if password and len(password) >= 4 else text


# --- outages -------------------------------------------------------------------------------


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database could not be reached."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)):
            return True
        if type(exc).__name__ in ("OperationalError", "InterfaceError"):  # the driver's own
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _Outage:
    """Retries one storage's calls through a short outage; after ``retry_s`` without a
    connection the storage is lost for good, and every later call fails at once."""

    def __init__(self, url: str, retry_s: float) -> None:
        self.url = url
        self.retry_s = retry_s
        self.lost: str | None = None
        self._local = threading.local()

    def call(self, name: str, fn, *args, **kwargs):
        if self.lost is not None:
            raise StorageLost(self.lost)
        if getattr(self._local, "busy", False):  # a call within a call: the outer one retries
            return fn(*args, **kwargs)
        self._local.busy = True
        try:
            return self._retrying(name, fn, args, kwargs)
        finally:
            self._local.busy = False

    def _retrying(self, name: str, fn, args, kwargs):
        deadline = time.monotonic() + self.retry_s
        delay, tries = FIRST_BACKOFF_S, 0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                tries += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    self.lost = (
                        f"lost the storage {redact(self.url)} ({_one_line(exc, self.url)}); "
                        f"retried {tries - 1} times over {self.retry_s:g} s. Finished trials are "
                        "safe in it; a trial left running is failed and queued again by the next "
                        "worker once the storage is back"
                    )
                    raise StorageLost(self.lost) from None
                _log.warning("storage %s unreachable during %s (%s): retrying in %.1f s",
                             redact(self.url), name, _one_line(exc, self.url), min(delay, left))
                time.sleep(min(delay, left))
                delay = min(2 * delay, MAX_BACKOFF_S)
                continue
            if tries:
                _log.warning("storage %s reachable again after %d retries", redact(self.url), tries)
            return result


def _retried(name: str):
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._outage.call(name, method, self, *args, **kwargs)

    return call


class _RetryingRDBStorage(RDBStorage):
    """RDBStorage whose calls ride out a short outage (see ``_Outage``)."""

    def __init__(self, url: str, retry_s: float, **kwargs) -> None:
        self._outage = _Outage(url, retry_s)
        super().__init__(url, **kwargs)

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry after a commit whose answer was lost finds its own write done.
                if attempts > 1 and RDBStorage.get_trial(self, trial_id).state == state:
                    return True
                raise

        return self._outage.call("set_trial_state_values", attempt)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna's fail_stale_trials fails these next, and a finished trial takes no more
        # attrs: say why now, while it still is RUNNING.
        stale = self._outage.call("_get_stale_trial_ids", RDBStorage._get_stale_trial_ids, self, study_id)
        for trial_id in stale:
            worker = self.get_trial(trial_id).user_attrs.get(WORKER_KEY) or {}
            reason = (f"{HEARTBEAT_LOST}: none for over {self.grace_period} s from its worker "
                      f"(host {worker.get('host', '?')}, pid {worker.get('pid', '?')})")
            try:
                self.set_trial_user_attr(trial_id, FAIL_REASON_KEY, reason)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished meanwhile: not stale after all
        return stale

    def heartbeat_ages(self, study_id: int) -> dict[int, float]:
        """Seconds since each RUNNING trial's last heartbeat, by trial number, measured
        on the server's clock as Optuna's own stale check does."""
        from optuna.storages._rdb import models  # where Optuna keeps its heartbeats
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            rows = (session.query(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
                    .join(models.TrialHeartbeatModel,
                          models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                    .filter(models.TrialModel.study_id == study_id)
                    .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING).all())
        return {number: (now - beat.replace(tzinfo=None)).total_seconds() for number, beat in rows}

    def record_heartbeat(self, trial_id: int) -> None:
        # Runs in Optuna's heartbeat thread, which has nobody to tell: the worker's own
        # next call reports a lost storage.
        try:
            self._outage.call("record_heartbeat", RDBStorage.record_heartbeat, self, trial_id)
        except StorageLost:
            pass


# Every storage method the outage wrapper retries, with the parameters it relies on (self
# left out). tests/test_storage.py compares them with Optuna's RDBStorage and BaseStorage,
# and checks that Optuna's _CachedStorage (which wraps every RDBStorage a study uses) still
# calls the private ones: an Optuna release that renames one fails the test, not a study.
RETRIED_METHODS: dict[str, tuple[str, ...]] = {
    "create_new_study": ("directions", "study_name"),
    "delete_study": ("study_id",),
    "set_study_user_attr": ("study_id", "key", "value"),
    "set_study_system_attr": ("study_id", "key", "value"),
    "get_study_id_from_name": ("study_name",),
    "get_study_name_from_id": ("study_id",),
    "get_study_directions": ("study_id",),
    "get_study_user_attrs": ("study_id",),
    "get_study_system_attrs": ("study_id",),
    "get_all_studies": (),
    "create_new_trial": ("study_id", "template_trial"),
    "set_trial_param": ("trial_id", "param_name", "param_value_internal", "distribution"),
    "get_trial_id_from_study_id_trial_number": ("study_id", "trial_number"),
    "get_trial_number_from_id": ("trial_id",),
    "get_trial_param": ("trial_id", "param_name"),
    "get_trial_params": ("trial_id",),
    "set_trial_intermediate_value": ("trial_id", "step", "intermediate_value"),
    "set_trial_user_attr": ("trial_id", "key", "value"),
    "set_trial_system_attr": ("trial_id", "key", "value"),
    "get_trial": ("trial_id",),
    "get_trial_user_attrs": ("trial_id",),
    "get_trial_system_attrs": ("trial_id",),
    "get_all_trials": ("study_id", "deepcopy", "states"),
    "get_n_trials": ("study_id", "state"),
    "get_best_trial": ("study_id",),
    # What Optuna's _CachedStorage calls on the RDBStorage it wraps:
    "_create_new_trial": ("study_id", "template_trial"),
    "_set_trial_param": ("trial_id", "param_name", "param_value_internal", "distribution", "previous_distribution"),
    "_get_trials": ("study_id", "states", "included_trial_ids", "trial_id_greater_than"),
    "_get_best_trial_id": ("study_id", "direction"),
}
# Overridden by hand in _RetryingRDBStorage (same check).
OVERRIDDEN_METHODS: dict[str, tuple[str, ...]] = {
    "set_trial_state_values": ("trial_id", "state", "values"),
    "record_heartbeat": ("trial_id",),
    "_get_stale_trial_ids": ("study_id",),
}
for _name in RETRIED_METHODS:
    setattr(_RetryingRDBStorage, _name, _retried(_name))


class _RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-failed trial, without copying its ``fail_reason``
    into the retry (which has not failed)."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != FAIL_REASON_KEY}
        super().__call__(study, trial)


def lost_heartbeats(study: optuna.Study) -> dict[int, float]:
    """The RUNNING trials whose worker missed its heartbeat (silent longer than the interval
    and a little more): trial number -> seconds left before Optuna's grace period runs out
    and the next check fails it. Empty on storages without a heartbeat."""
    storage = getattr(storage_of(study), "_backend", storage_of(study))  # Optuna's cache wraps it
    if not isinstance(storage, _RetryingRDBStorage) or not storage.heartbeat_interval:
        return {}
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    silent_after = storage.heartbeat_interval + min(5.0, storage.heartbeat_interval / 2)
    try:
        ages = storage.heartbeat_ages(study._study_id)
    except Exception:  # a courtesy for a progress line: never its failure
        return {}
    return {n: max(0.0, grace - age) for n, age in ages.items() if age > silent_after}


def outage_of(storage: BaseStorage) -> _Outage | None:
    """The outage policy behind a study's storage (None: a journal file, or not tunewise's)."""
    backend = getattr(storage, "_backend", storage)
    return getattr(backend, "_outage", None)


# --- one lock per study, for claiming trials ----------------------------------------------


class _ServerLock:
    """A named lock held by one database session: PostgreSQL advisory lock or MySQL
    GET_LOCK. The server drops it when the session ends, so a killed worker never keeps it."""

    _SQL = {
        "postgresql": ("SELECT pg_try_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
        "mysql": ("SELECT GET_LOCK(:key, 0)", "SELECT RELEASE_LOCK(:key)"),
    }

    def __init__(self, engine, dialect: str, key, outage: _Outage | None) -> None:
        self._engine = engine
        self._try, self._unlock = (sqlalchemy.text(q) for q in self._SQL[dialect])
        self._key = key
        self._outage = outage
        self._conn = None

    def acquire(self) -> None:
        if self._outage is None:
            self._acquire()
        else:
            self._outage.call("slot lock", self._acquire)

    def _acquire(self) -> None:
        conn = self._engine.connect()
        try:
            while not conn.execute(self._try, {"key": self._key}).scalar():
                conn.commit()
                time.sleep(_LOCK_POLL_S)
            conn.commit()
        except BaseException:
            conn.invalidate()  # whatever it held goes with the session
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(self._unlock, {"key": self._key})
            conn.commit()
        except Exception:
            conn.invalidate()  # the session ends, and its lock with it
        finally:
            conn.close()


class _NoLock:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def slot_lock(study: optuna.Study):
    """The lock several workers of ``study`` hold, one at a time, to claim their next trial.

    ``acquire()`` blocks; ``release()``. Storages tunewise does not open (in-memory, a
    custom one) get a no-op lock: one process, nothing to coordinate.
    """
    storage = storage_of(study)
    backend = getattr(storage, "_backend", None)
    if isinstance(storage, JournalStorage) and isinstance(backend, JournalFileBackend):
        return FileLock(backend._file_path + LOCK_SUFFIX)
    if isinstance(backend, RDBStorage):
        dialect = backend.engine.dialect.name
        if dialect == "sqlite":
            database = backend.engine.url.database
            if not database or database == ":memory:" or database.startswith("file:"):
                return _NoLock()
            return FileLock(str(Path(database).expanduser()) + LOCK_SUFFIX)
        name = f"tunewise:{study.study_name}"
        if dialect == "postgresql":
            key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
            return _ServerLock(backend.engine, dialect, key, outage_of(storage))
        if dialect == "mysql":
            return _ServerLock(backend.engine, dialect, name[:64], outage_of(storage))
    return _NoLock()


def location(storage: BaseStorage) -> str:
    """Where ``storage`` keeps its studies, safe to show and record: a journal file's
    absolute path or a redacted URL."""
    backend = getattr(storage, "_backend", None)
    if isinstance(backend, JournalFileBackend):
        return str(Path(backend._file_path).resolve())
    if isinstance(backend, RDBStorage):
        return redact(backend.url)
    return type(storage).__name__


def load_if_exists(storage: BaseStorage, name: str) -> optuna.Study | None:
    """Study ``name`` in ``storage``, or None when there is none (nothing is created)."""
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def load_study(name: str, storage: BaseStorage) -> optuna.Study:
    """Study ``name`` in ``storage``; ConfigError naming the studies there when it is not."""
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise ConfigError(f"study {name!r} is not in storage {location(storage)}{did_you_mean(name, names)}; "
                          f"allowed: {', '.join(sorted(names)) or 'none there yet'}")
    return optuna.load_study(study_name=name, storage=storage)
