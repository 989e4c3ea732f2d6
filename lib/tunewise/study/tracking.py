"""Experiment tracking: a study's trials also logged where a team already looks.

``trackers.open_tracker(settings)`` gives the tracker the ``tracking`` setting names:

- ``none``: ``NoTracking``, which does nothing;
- ``mlflow``: one parent run per study, one nested run per trial (tracking_mlflow.py);
- ``tensorboard``: the same curves as event files in ``RUN_DIR/tensorboard`` (tracking_tensorboard.py).

Every tracker is used the same way by whoever runs trials: ``start(study, info, sync=...)``
before the first trial, ``on_trial`` as an Optuna callback, ``finish(study, summary)``
after the last, which returns what goes into summary.json under ``tracking``.

Tracking never stops a study. A server that is down or refuses costs one warning: the
trial's record waits (nothing is sent for ``RETRY_S``), is tried again after a later trial
and once more at the end, and what still could not be logged is listed then (in the
summary and as a warning in the run's log). ``sync`` (the process that starts a run, not
a worker joining it) also logs the study's finished trials that are not logged yet: trials
run before tracking was on, or by a worker whose server was down; trials already logged
are never logged twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise.train.objective import ACCURACY_CURVE_ATTR, F1_CURVE_ATTR, TRAIN_LOSS_ATTR

OPEN, SYNC = "study run", "trials not logged yet"  # names of what may wait
RETRY_S = 30.0  # after a failed call, how long nothing is sent (a dead server costs one timeout per RETRY_S)
TRIAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # what gets a record
# Curves drawn per epoch (step = epoch, 1-based): metric name -> trial user attr.
CURVES = {"val_macro_f1": F1_CURVE_ATTR, "val_accuracy": ACCURACY_CURVE_ATTR, "train_loss": TRAIN_LOSS_ATTR}

_log = logging.getLogger(__name__)


def trial_curves(trial: FrozenTrial) -> dict[str, list[tuple[int, float]]]:
    """The trial's per-epoch curves as (epoch, value) pairs: validation macro-F1 and
    accuracy, training loss. Trials of older studies have only the reported macro-F1."""
    curves = {}
    for name, attr in CURVES.items():
        values = trial.user_attrs.get(attr)
        if isinstance(values, list) and values:
            curves[name] = [(epoch, float(v)) for epoch, v in enumerate(values, start=1)]
    if "val_macro_f1" not in curves and trial.intermediate_values:
        curves["val_macro_f1"] = sorted((int(s), float(v)) for s, v in trial.intermediate_values.items())
    return curves


def pruned_at(trial: FrozenTrial) -> int | None:
    """The epoch a pruned trial stopped after (its last reported step), else None."""
    if trial.state != TrialState.PRUNED:
        return None
    steps = [int(s) for s in trial.intermediate_values] or [len(trial.user_attrs.get(F1_CURVE_ATTR) or [])]
    return max(steps) or None


class NoTracking:
    """``tracking: none``: nothing is logged anywhere."""

    kind = "none"

    def start(self, study: optuna.Study, info: dict[str, Any], *, sync: bool = True) -> None:
        pass

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        pass

    def finish(self, study: optuna.Study, summary: dict[str, Any], *, sync: bool = True) -> dict[str, Any] | None:
        return None

    def log_phase(self, study: optuna.Study | None, name: str, record: dict[str, Any]) -> dict[str, Any] | None:
        return None


class Tracker(NoTracking):
    """What every real tracker shares: records that wait while the destination cannot be
    reached, one warning per outage, and the list of what could not be logged.

    Subclasses implement ``_open_study`` (find or make the study's place), ``_logged``
    (trial numbers already there), ``_log_trial``, ``_log_summary`` and ``_log_phase``;
    ``where`` is the destination as it may be shown (no password)."""

    kind = "?"

    def __init__(self, where: str, secrets: tuple[tuple[str, str], ...] = ()) -> None:
        self.where = where
        self._secrets = tuple((s, masked) for s, masked in secrets if s)  # (text, what is shown instead)
        self._pending: dict[str, Callable[[], None]] = {}  # item -> how to log it, in order
        self._down_until = 0.0
        self._warning: str | None = None
        self._opened = False
        self.logged_trials: set[int] = set()
        self._info: dict[str, Any] = {}

    # --- the interface ----------------------------------------------------------------------

    def start(self, study: optuna.Study, info: dict[str, Any], *, sync: bool = True) -> None:
        """Find or make the study's place (one per study, however many runs and workers),
        and with ``sync`` log the finished trials not logged yet."""
        self._info = dict(info)
        self._attempt(OPEN, lambda: self._open(study))
        if sync:
            self._attempt(SYNC, lambda: self._sync(study))

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: log the trial that just finished; never raises."""
        if trial is None or trial.state not in TRIAL_STATES:
            return
        self._attempt(f"trial {trial.number}", lambda: self._trial(study, trial.number))
        self._retry_pending()

    def finish(self, study: optuna.Study, summary: dict[str, Any], *, sync: bool = True) -> dict[str, Any]:
        """Log the study's outcome, try what waits once more, and say what could not be
        logged (also as a warning); returns the summary's ``tracking`` entry."""
        if sync:
            self._pending.setdefault(SYNC, lambda: self._sync(study))
        self._pending["study summary"] = lambda: self._summary(study, summary)
        self._retry_pending(final=True)
        unlogged = self._unlogged(study, sync)
        if unlogged:
            _log.warning("tracking: %d item(s) could not be logged to %s %s: %s", len(unlogged), self.kind,
                         self.where, ", ".join(unlogged))
        return {"kind": self.kind, "where": self.where, **self._describe(), "logged_trials": len(self.logged_trials),
                "unlogged": unlogged, "warning": self._warning}

    def log_phase(self, study: optuna.Study | None, name: str, record: dict[str, Any]) -> dict[str, Any]:
        """Log a phase that trains outside a study's trials (validation, the final model):
        ``record`` holds ``params``, ``metrics``, ``tags``, ``runs`` (one dict of params and
        metrics per training run) and ``artifacts`` (folders). Returns the ``tracking`` entry."""
        self._attempt(name, lambda: self._log_phase(study, name, record))
        unlogged = list(self._pending)
        if unlogged:
            _log.warning("tracking: could not log %s to %s %s", ", ".join(unlogged), self.kind, self.where)
        return {"kind": self.kind, "where": self.where, **self._describe(), "unlogged": unlogged,
                "warning": self._warning}

    def _unlogged(self, study: optuna.Study, sync: bool) -> list[str]:
        """What is still waiting, by name: the study's run, each trial (with ``sync``: every
        finished trial not known to be logged), the summary."""
        trials = [int(item.split()[1]) for item in self._pending if item.startswith("trial ")]
        if sync and SYNC in self._pending:
            trials = [t.number for t in study.get_trials(deepcopy=False, states=TRIAL_STATES)
                      if t.number not in self.logged_trials]
        head = [OPEN] if OPEN in self._pending else []
        rest = [i for i in self._pending if i not in (OPEN, SYNC) and not i.startswith("trial ")]
        return head + [f"trial {n}" for n in sorted(set(trials))] + rest

    # --- what subclasses implement ------------------------------------------------------------

    def _open_study(self, study: optuna.Study) -> None:
        raise NotImplementedError

    def _logged(self, study: optuna.Study) -> set[int]:
        raise NotImplementedError

    def _log_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        raise NotImplementedError

    def _log_summary(self, study: optuna.Study, summary: dict[str, Any]) -> None:
        raise NotImplementedError

    def _log_phase(self, study: optuna.Study | None, name: str, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        return {}

    # --- the bookkeeping ------------------------------------------------------------------------

    def _open(self, study: optuna.Study) -> None:
        if not self._opened:
            self._open_study(study)
            self._opened = True

    def _trial(self, study: optuna.Study, number: int) -> None:
        self._open(study)
        if number in self.logged_trials:
            return
        trial = study.get_trials(deepcopy=False)[number]  # the stored trial: its last user attrs
        self._log_trial(study, trial)
        self.logged_trials.add(number)

    def _sync(self, study: optuna.Study) -> None:
        self._open(study)
        there = self._logged(study)
        self.logged_trials |= there
        for t in study.get_trials(deepcopy=False, states=TRIAL_STATES):
            if t.number not in self.logged_trials:
                self._log_trial(study, t)
                self.logged_trials.add(t.number)

    def _summary(self, study: optuna.Study, summary: dict[str, Any]) -> None:
        self._open(study)
        self._log_summary(study, summary)

    def _attempt(self, item: str, action: Callable[[], None], *, final: bool = False) -> bool:
        """Run ``action``; on failure keep it for later under ``item`` (one warning per outage)."""
        if not final and time.monotonic() < self._down_until:
            self._pending.setdefault(item, action)
            return False
        try:
            action()
        except Exception as exc:  # any failure of the destination: the study goes on
            self._pending[item] = action
            self._down_until = time.monotonic() + RETRY_S
            if self._warning is None:
                self._warning = (f"tracking: cannot log to {self.kind} {self.where} "
                                 f"({self._clean(describe(exc))}); the study goes on, and what could not be "
                                 "logged is listed at the end")
                _log.warning("%s", self._warning)
            return False
        self._pending.pop(item, None)
        return True

    def _retry_pending(self, final: bool = False) -> None:
        for item, action in list(self._pending.items()):
            if not self._attempt(item, action, final=final):
                return  # still down: the rest waits too

    def _clean(self, text: str) -> str:
        """``text`` with every credential of the destination masked."""
        for secret, masked in self._secrets:
            text = text.replace(secret, masked)
        return text


def tracking_line(entry: dict[str, Any] | None) -> str | None:
    """One line for people: where the study was logged, and what could not be."""
    if not entry:
        return None
    run = entry.get("parent_run_id") or entry.get("run_id") or entry.get("folder")
    line = f"{entry['kind']} {entry['where']}" + (f", experiment {entry['experiment']!r}" if entry.get("experiment") else "")
    line += f", run {run}" if run else ""
    if entry.get("unlogged"):
        line += f"; not logged: {', '.join(entry['unlogged'])} ({entry.get('warning') or 'unreachable'})"
    return line


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
