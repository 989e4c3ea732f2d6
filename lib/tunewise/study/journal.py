"""Optuna's journal file, kept readable through crashes and full disks.

How Optuna writes it (``optuna/storages/journal/_file.py``): ``append_logs`` takes a lock
(by default ``JournalFileSymlinkLock``: a symlink only one process can create), opens the file for
appending (O_APPEND), writes all the call's records, each a JSON line ending in a newline,
in one write, then flushes and fsyncs. Workers therefore never interleave records: the
lock serialises appends, and O_APPEND puts each write at the true end of the file. A record
is torn only when its writer dies or the disk fills mid-write, and then it is the file's
last line, without its newline. Optuna's reader skips such a tail, but the next append lands
right after the fragment: the two make one unreadable line in the middle of the file, and
from then on every read fails with a JSONDecodeError.

What tunewise adds:
- ``FlockJournalLock``: the append lock as an flock(), which the kernel drops when a worker
  dies; Optuna's symlink lock stays behind a SIGKILLed worker and stalls every other one
  for its 30 s grace period. (A plain-Optuna process writing the same file at once would
  not see this lock; tunewise's own processes all use it, and O_APPEND still keeps whole
  writes apart.)
- ``GuardedJournalBackend``: before each append, under Optuna's same lock, a file that does
  not end in a newline has a torn tail: it is cut off (after a backup copy, with a warning)
  so the new records start a line of their own. An append that fails (a full disk) is cut
  back to where it started, so it leaves no fragment behind.
- ``check(path)`` on open: the torn tail is cut the same way; an unreadable record in the
  middle stops with one message naming the file and line, and how to recover.
- ``repair(path)``: every readable record (also the one glued after a fragment) into a
  new journal at ``path``; the original is kept beside it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file

from tunewise.atomic import is_disk_full
from tunewise.errors import SetupError

_log = logging.getLogger(__name__)

# Optuna's JournalOperation codes, for saying what a dropped record was.
OPERATIONS = {0: "create study", 1: "delete study", 2: "set study user attr", 3: "set study system attr",
              4: "create trial", 5: "set trial param", 6: "set trial state/values", 7: "report intermediate value",
              8: "set trial user attr", 9: "set trial system attr", 10: "discard trials"}
_RECORD_START = b'{"op_code"'
_BLOCK = 1 << 16


def describe_record(raw: bytes) -> str:
    """'set trial param' (from its op_code), or 'unknown record' when even that is gone."""
    match = re.search(rb'"op_code"\s*:\s*(\d+)', raw)
    return OPERATIONS.get(int(match.group(1)), "unknown record") if match else "unknown record"


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _tail_start(fh, size: int) -> int:
    """Offset just after the last newline in the first ``size`` bytes (0: none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _BLOCK)
        fh.seek(start)
        block = fh.read(pos - start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def cut_torn_tail(path: str | Path) -> str | None:
    """Cut a last record left without its newline (call with Optuna's lock held); the file
    before is copied to ``PATH.torn-STAMP``. Returns the warning given, or None."""
    path = Path(path)
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return None
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        keep = _tail_start(fh, size)
        fh.seek(keep)
        fragment = fh.read()
        backup = path.with_name(f"{path.name}.torn-{_stamp()}")
        shutil.copy2(path, backup)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    message = (f"journal {path}: its last record was cut off mid-write (a crash or a full disk): dropped "
               f"{len(fragment)} bytes, a '{describe_record(fragment)}' record; every record before it is kept. "
               f"The file as it was is saved at {backup}")
    _log.warning(message)
    return message


def check(path: str | Path, lock) -> list[str]:
    """Cut a torn tail (under ``lock``, Optuna's), then read every record: an unreadable one
    in the middle is a SetupError naming the file, the line and the way to recover.
    Returns the warnings given."""
    path = Path(path)
    warnings = []
    with get_lock_file(lock):
        cut = cut_torn_tail(path)
        if cut:
            warnings.append(cut)
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith(b"\n"):
                break  # another worker's append in progress (it holds the lock now, not us)
            try:
                json.loads(line)
            except ValueError as exc:
                raise SetupError(
                    f"journal {path}, line {number}: not a readable record ({getattr(exc, 'msg', exc)}; "
                    f"{len(line)} bytes starting {line[:40]!r}). Optuna cannot read past it, so no study in this "
                    f"file opens. Recover with: tunewise repair {path}  (it salvages every readable record into "
                    "a new journal at the same path and keeps this file beside it)"
                ) from None
    return warnings


class FlockJournalLock(BaseJournalFileLock):
    """The journal's append lock as an flock() on ``PATH.flock``: the kernel releases it when
    its holder dies. Optuna's default symlink lock outlives a worker SIGKILLed mid-append,
    and every other worker then waits its 30 s grace period before breaking it (measured
    by benchmarks/faults.py). A new descriptor per acquire: threads exclude each other too."""

    def __init__(self, journal_path: str) -> None:
        self._path = journal_path + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock


def journal_lock(path: str | Path) -> BaseJournalFileLock:
    """flock where the platform has it (POSIX), else Optuna's symlink lock."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return JournalFileSymlinkLock(str(path))
    return FlockJournalLock(str(path))


class GuardedJournalBackend(JournalFileBackend):
    """Optuna's journal file backend, whose appends never glue onto a torn tail and never
    leave one behind (see the module's docstring), under a lock a killed worker cannot keep."""

    def __init__(self, file_path: str, lock_obj=None) -> None:
        super().__init__(file_path, lock_obj or journal_lock(file_path))
        self.warnings = check(file_path, self._lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            cut_torn_tail(self._file_path)
            # Unbuffered: a buffered file would write what is left of a failed write again
            # when it closes, after the cut below.
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND)
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                # Whatever part got written goes: the file ends where this append began.
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise journal_error(self._file_path, exc) from None
            finally:
                os.close(fd)


def journal_error(path: str | Path, exc: OSError) -> SetupError:
    if is_disk_full(exc):
        return SetupError(f"journal {path}: the disk is full ({exc.strerror}): the record was not written and the "
                          "file is as it was before it. Free some space and run the same command again to resume")
    return SetupError(f"journal {path}: cannot write ({exc.strerror or exc}); the file is as it was before this record")


@dataclass
class Repair:
    path: Path
    original: Path
    kept: int = 0
    salvaged: int = 0  # records found glued after a fragment on one line
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (line, what it was)
    studies: dict[str, int] = field(default_factory=dict)  # name -> finished trials

    def text(self) -> str:
        lines = [f"repaired {self.path}: {self.kept} records kept"
                 + (f" ({self.salvaged} recovered from lines glued to a fragment)" if self.salvaged else "")
                 + f", {len(self.dropped)} dropped"]
        lines += [f"  dropped line {n}: {what}" for n, what in self.dropped]
        lines += [f"  study {name}: {n} finished trials" for name, n in self.studies.items()]
        lines.append(f"the original is kept at {self.original}")
        return "\n".join(lines)


def _records(line: bytes) -> tuple[list[bytes], bool]:
    """The readable records on one line: the line itself, or what follows a fragment
    glued before it. Returns (records, whether a fragment was cut off)."""
    body = line.rstrip(b"\r\n")
    try:
        json.loads(body)
        return [body], False
    except ValueError:
        pass
    start = body.find(_RECORD_START, 1)
    while start > 0:
        try:
            json.loads(body[start:])
            return [body[start:]], True
        except ValueError:
            start = body.find(_RECORD_START, start + 1)
    return [], True


def repair(path: str | Path) -> Repair:
    """Write every readable record of journal ``path`` into a new journal at ``path``; the
    original moves to ``PATH.broken-STAMP``. Taken under Optuna's lock, so no worker writes
    meanwhile. The new journal is read back through Optuna before this returns."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.trial import TrialState

    path = Path(path)
    if not path.is_file():
        raise SetupError(f"repair: {path} does not exist; allowed: a journal file (study.journal)")
    original = path.with_name(f"{path.name}.broken-{_stamp()}")
    result = Repair(path, original)
    tmp = path.with_name(f".{path.name}.repair")
    with get_lock_file(journal_lock(path)):
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for number, line in enumerate(src, start=1):
                records, fragment = _records(line)
                if fragment and records:
                    result.salvaged += 1
                if fragment:
                    result.dropped.append((number, f"a '{describe_record(line)}' fragment of {len(line)} bytes"))
                for record in records:
                    dst.write(record + b"\n")
                    result.kept += 1
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copy2(path, original)
        os.replace(tmp, path)
    storage = JournalStorage(JournalFileBackend(str(path)))
    for s in storage.get_all_studies():
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        result.studies[s.study_name] = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return result
