"""Where studies live: one storage URL (or none) -> an Optuna storage, opened fail-fast.

- No URL: Optuna's journal file at ``<run_dir>/study.journal``. Several worker processes
  on one machine can share it (each append takes a lock file; SQLite with several writers
  hits "database is locked"), and optuna-dashboard opens it as is. A path ending in
  ``.journal`` or ``.log`` is a journal file too.
- ``sqlite:///``, ``postgresql://``, ``mysql://`` (optionally ``+driver``): an RDB storage
  with a heartbeat, so a killed worker's trial is failed and retried (up to 3 times).

Credentials stay out of notebooks and logs: ``${VAR}`` in a URL is read from the
environment, ``TUNEWISE_STORAGE`` supplies the whole URL when none is given, and every
message shows ``redact(url)``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from .errors import ConfigError, SetupError, did_you_mean

ENV_VAR = "TUNEWISE_STORAGE"
JOURNAL_NAME = "study.journal"
JOURNAL_SUFFIXES = (".journal", ".log")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 120
MAX_RETRY = 3
CONNECT_TIMEOUT_S = 5

# pip package for a missing DB driver module (ModuleNotFoundError.name -> what to install).
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def open_storage(url: str | None, run_dir: str | Path) -> BaseStorage:
    """The storage for ``url`` (None/"" -> $TUNEWISE_STORAGE -> the run's journal file).

    Raises ConfigError for a URL tunewise does not accept and SetupError (one line, URL
    redacted) when the storage cannot be opened or reached.
    """
    url = expand_env(url or os.environ.get(ENV_VAR) or "")
    if not url:
        return _journal(Path(run_dir) / JOURNAL_NAME)
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
    return _rdb(url, scheme)


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
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise SetupError(f"cannot open journal storage {path}: {exc.strerror or exc}") from None


def _rdb(url: str, scheme: str) -> RDBStorage:
    _check_driver(url)
    engine_kwargs = {}
    if scheme != "sqlite":
        # Without this, an unreachable server hangs for the OS TCP timeout (minutes).
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        if scheme == "sqlite":
            _make_sqlite_parent(url)
        with warnings.catch_warnings():
            # Heartbeat and its retry callback are flagged experimental; we rely on them.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
    except Exception as exc:  # any driver/DB error: one clear line instead of a traceback
        raise SetupError(f"cannot open storage {redact(url)}: {_one_line(exc, url)}") from None


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
