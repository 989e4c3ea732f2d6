"""open_storage on real storages: journal files, SQLite files, and an unreachable server."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
import socket
import time

import optuna
import pytest

from tunewise.errors import ConfigError, SetupError
from tunewise.study.storage import (
    ENV_VAR,
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    JOURNAL_NAME,
    OVERRIDDEN_METHODS,
    RETRIED_METHODS,
    open_storage,
    redact,
    slot_lock,
)


@pytest.fixture(autouse=True)
def _no_env_storage(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _roundtrip(storage) -> None:
    """A study written through ``storage`` can be read back."""
    study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2


@pytest.mark.parametrize("url", [None, ""])
def test_default_is_a_journal_file_in_the_run_dir(tmp_path, url):
    run_dir = tmp_path / "runs" / "r1"
    storage = open_storage(url, run_dir)
    assert isinstance(storage, optuna.storages.JournalStorage)
    _roundtrip(storage)
    assert (run_dir / JOURNAL_NAME).stat().st_size > 0


@pytest.mark.parametrize("name", ["a/study.journal", "b/optuna.log"])
def test_journal_path(tmp_path, name):
    storage = open_storage(str(tmp_path / name), tmp_path / "unused")
    assert isinstance(storage, optuna.storages.JournalStorage)
    _roundtrip(storage)
    assert (tmp_path / name).exists()
    assert not (tmp_path / "unused").exists()


def test_sqlite_gets_heartbeat_and_retry(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/db/study.db", tmp_path)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.heartbeat_interval == HEARTBEAT_INTERVAL_S
    assert storage.grace_period == GRACE_PERIOD_S
    assert isinstance(
        storage.get_heartbeat_stale_trial_callback(),
        optuna.storages.RetryHeartbeatStaleTrialCallback,
    )
    _roundtrip(storage)
    assert (tmp_path / "db" / "study.db").exists()


def test_env_var_supplies_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TW_DB_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_VAR, "sqlite:///${TW_DB_DIR}/env.db")
    storage = open_storage(None, tmp_path / "run")
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (tmp_path / "env.db").exists()


def test_missing_env_var_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("TW_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"TW_NOT_SET is not set"):
        open_storage("postgresql://tw:${TW_NOT_SET}@localhost/db", tmp_path)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:s3cret@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("mysql+pymysql://u:p%40ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host/db?user=u&password=pw", "postgresql://host/db?user=u&password=***"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_redact(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("url", ["redis://localhost/0", "postgres://u:p@h/db"])
def test_unknown_scheme_lists_what_is_allowed(tmp_path, url):
    with pytest.raises(ConfigError) as info:
        open_storage(url, tmp_path)
    message = str(info.value)
    assert "sqlite:///" in message and "postgresql://" in message and ".journal" in message
    assert ":p@" not in message


def test_plain_path_is_refused_with_the_forms_allowed(tmp_path):
    hint = r"not a URL or a journal file \(did you mean 'sqlite:///"
    with pytest.raises(ConfigError, match=hint):
        open_storage(str(tmp_path / "study.db"), tmp_path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_fails_fast_with_one_clear_line(tmp_path):
    url = f"postgresql://tw:s3cret@127.0.0.1:{_closed_port()}/tunewise"
    start = time.monotonic()
    with pytest.raises(SetupError) as info:
        open_storage(url, tmp_path)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert "postgresql://tw:***@127.0.0.1" in message and "s3cret" not in message
    if importlib.util.find_spec("psycopg") is None:
        assert "psycopg[binary]" in message
    else:
        assert "refused" in message.lower() or "connect" in message.lower()


def test_unusable_sqlite_file_is_a_setup_error(tmp_path):
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not a database" * 100)
    shown = r"cannot open storage sqlite:///.*not-a-db\.db: file is not a database"
    with pytest.raises(SetupError, match=shown):
        open_storage(f"sqlite:///{bad}", tmp_path)


def _parameters(method) -> tuple[str, ...]:
    return tuple(inspect.signature(method).parameters)[1:]  # self left out


@pytest.mark.parametrize("name", [*RETRIED_METHODS, *OVERRIDDEN_METHODS])
def test_every_storage_method_the_outage_wrapper_relies_on_is_still_optunas(name):
    """An Optuna release that renames, drops or re-signs a method the outage wrapper wraps
    fails here, not in the middle of a study (where the call would go unretried)."""
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.storages._cached_storage import _CachedStorage

    relied_on = {**RETRIED_METHODS, **OVERRIDDEN_METHODS}[name]
    assert hasattr(RDBStorage, name), f"RDBStorage.{name} is gone"
    assert _parameters(getattr(RDBStorage, name)) == relied_on
    if hasattr(BaseStorage, name):
        assert _parameters(getattr(BaseStorage, name)) == relied_on
    else:  # a private method: only worth wrapping while Optuna's cache still calls it
        assert f"_backend.{name}(" in inspect.getsource(_CachedStorage), f"_CachedStorage no longer calls {name}"


def test_the_slot_lock_beside_a_journal_is_exclusive_across_processes(tmp_path):
    """filelock's lock: a second process waits while this one holds it."""
    study = optuna.create_study(study_name="s", storage=open_storage(None, tmp_path))
    lock = slot_lock(study)
    lock.acquire()
    try:
        code = ("import filelock, sys; lock = filelock.FileLock(sys.argv[1]); "
                "lock.acquire(timeout=0.5)")
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path / (JOURNAL_NAME + ".slots.lock"))],
                              capture_output=True, text=True, timeout=60)
        assert held.returncode != 0 and "Timeout" in held.stderr
    finally:
        lock.release()
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path / (JOURNAL_NAME + ".slots.lock"))],
                          capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr
