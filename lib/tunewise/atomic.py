"""Files written whole or not at all: readers see the old file or the new one."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tunewise.errors import SetupError


# A full disk, a full quota, or a file-size limit (RLIMIT_FSIZE): no room for the write.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(path: str | Path, exc: OSError) -> SetupError:
    return SetupError(f"cannot write {path}: the disk is full ({exc.strerror or exc}); nothing was written, "
                      "the file as it was before is unchanged. Free some space and run the same command again")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` into ``path`` whole or not at all; a full disk is one SetupError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # a full disk shows here at the latest, not after the rename
        # mkstemp creates the file private (0600); reports and summaries are for sharing.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str))


SUMMARY_LATEST = "summary.json"


def summary_name(phase: str) -> str:
    """Each phase's own summary in a run folder (quick, focused, ... side by side)."""
    return f"summary-{phase}.json"


def write_summary_files(run_dir: str | Path, phase: str, summary: Any) -> Path:
    """``summary-PHASE.json``, kept when another phase runs into the same folder, and
    ``summary.json``, the latest phase's (what scripts that read one file find)."""
    path = write_json_atomic(Path(run_dir) / summary_name(phase), summary)
    write_json_atomic(Path(run_dir) / SUMMARY_LATEST, summary)
    return path
