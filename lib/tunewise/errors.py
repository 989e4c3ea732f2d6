"""User-facing errors: one readable message naming the field or file, what was wrong,
and what is allowed. The CLI prints these without a traceback (unless --traceback).
Also the two value checks every parameter check uses (``is_int``, ``is_number``)."""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

# One exit status per outcome, the same for `tunewise run`, `pipeline`, `tune` and `worker`
# (the README's table): a supervisor restarts on 3, a script stops on 1 or 2.
EXIT_OK = 0
EXIT_FAILED = 1  # the run failed: a notebook cell, a study stopped by its failure guard or a setup error
EXIT_BAD_INPUT = 2  # refused before any work, nothing written: bad input, a refused resume, no storage
EXIT_STORAGE_LOST = 3  # the storage was lost mid-study and did not come back: run again once it is
EXIT_INTERRUPTED = 130  # Ctrl-C: the interrupted trial is queued again


class TunewiseError(Exception):
    """Bad input or a broken setup, found before (or instead of) doing any work."""


class ConfigError(TunewiseError, ValueError):
    """A parameter, params file or search space is invalid."""


class DataError(TunewiseError):
    """A dataset path, folder, CSV or image is missing or unusable."""


class SetupError(TunewiseError):
    """The setup itself is broken (so every trial would fail): stop the study."""

    during_study = False  # True once it stopped a running study (a failed run, not refused input)


def did_you_mean(name: str, valid: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest valid names, or '' when none is close."""
    matches = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=cutoff)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def is_int(value: Any) -> bool:
    """An int, not a bool (YAML's true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any, *, finite: bool = True) -> bool:
    """An int or float, not a bool; finite unless ``finite=False``."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not finite or math.isfinite(value)))


class FieldChecks:
    """Collects `field: value is not allowed; allowed: ...` lines for one settings section
    (its ``problems()``), so every bad value of a section is named in one message."""

    def __init__(self, section: Any) -> None:
        self.section = section
        self.errors: list[str] = []

    def need(self, ok: bool, key: str, allowed: str) -> None:
        if not ok:
            self.errors.append(f"{key}: {getattr(self.section, key)!r} is not allowed; allowed: {allowed}")
