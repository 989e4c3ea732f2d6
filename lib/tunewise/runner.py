"""Run a study's trials within a budget that spans every run of it, and say why it stopped.

``run_trials`` works with any ``objective(trial) -> float``. Budgets are study-wide:
``n_trials`` counts finished (COMPLETE + PRUNED) trials across all runs and ``timeout``
counts time across all runs, so a resumed run only does what is left. Around Optuna's
own loop it adds:

- recovery of trials left RUNNING by a dead worker (failed, then queued again);
- ``fail_reason`` on every failed trial (``"ExcType: message"``), the study going on,
  except for SetupError (every trial would fail): it stops the study and is re-raised;
- Ctrl-C: the running trial ends FAILED (``fail_reason`` "interrupted") and is queued for
  the next run, the clock is flushed, and a RunResult with ``interrupted=True`` is
  returned so a notebook can show it (the CLI exits 130);
- the stop reason, in study user attrs ``tunewise.stop_reason`` / ``tunewise.stop_details``
  (the same keys stop rules write: a name, and a dict of figures with a ``message``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from .errors import SetupError
from .study import (
    FAIL_REASON_KEY,
    FINISHED_STATES,
    IDENTITY_KEY,
    StudyClock,
    fail_and_requeue,
    finished_trials,
    record_worker,
    recover_stale_trials,
    remaining_trials,
)

STOP_REASON_KEY = "tunewise.stop_reason"
STOP_DETAILS_KEY = "tunewise.stop_details"
PHASE_KEY = "tunewise.phase"
INTERRUPTED = "interrupted"
_MAX_REASON_CHARS = 500

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class RunResult:
    """What a run did and where the study stands (counts and elapsed_s are study-wide)."""

    study_name: str
    n_finished: int  # COMPLETE + PRUNED
    n_complete: int
    n_pruned: int
    n_failed: int
    ran_this_run: int  # trials started by this run
    best_value: float | None
    best_params: dict[str, Any] | None
    # budget, timeout, attempts, interrupted, setup error, error, stopped, or a stop rule's name
    stop_reason: str
    stop_details: dict[str, Any]  # figures and a readable "message"
    elapsed_s: float
    run_wall_s: float
    interrupted: bool


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int | None,
    timeout: float | None,
    callbacks: Iterable[Callback] = (),
    catch: Iterable[type[Exception]] = (Exception,),
    show_progress_bar: bool = False,
    clock: StudyClock | None = None,
) -> RunResult:
    """Run trials until the study-wide budget is met, time runs out, or a callback stops it.

    Failed trials do not use up ``n_trials``: new trials replace them, but a run makes at
    most ``max_attempts(remaining)`` attempts (failures beyond that mean something is
    wrong, and the failure guard usually stops the study sooner). If failures leave the
    budget short the stop reason is "attempts" and the next run does the rest. Raises SetupError (after the trial is
    marked FAILED) when the objective raises one, and re-raises exceptions not in ``catch``.
    Pass ``clock`` when stop rules need its ``elapsed_s`` (it must be this study's and new).
    """
    recover_stale_trials(study)
    clock = clock if clock is not None else StudyClock(study)
    _record_stop(study, None, None)  # a reason left by an earlier run is not this run's
    remaining = None if n_trials is None else remaining_trials(study, n_trials)
    attempts = None if remaining is None else max_attempts(remaining)
    time_left = None if timeout is None else timeout - clock.elapsed_s()
    if remaining == 0 or (time_left is not None and time_left <= 0):
        reason, details = _why_stopped(study, clock, n_trials, timeout, attempts, 0)
        return _finish(study, clock, reason, details)

    run = _Run(study, objective)
    all_callbacks = [clock, *callbacks]  # clock first: stop rules see this trial's time
    if n_trials is not None:
        # Optuna's n_trials is per process; this also stops when other workers fill the budget.
        all_callbacks.append(MaxTrialsCallback(n_trials, states=FINISHED_STATES))
    try:
        study.optimize(
            run,
            n_trials=attempts,
            timeout=time_left,
            callbacks=all_callbacks,
            catch=tuple(catch),
            show_progress_bar=show_progress_bar,
        )
    except KeyboardInterrupt:
        requeued = _requeue_interrupted(study, run.current)
        details = {"trial": run.current, "requeued": requeued,
                   "message": f"Ctrl-C during trial {run.current}"
                   + ("; it is queued for the next run." if requeued else ".")}
        return _finish(study, clock, INTERRUPTED, details, run.started, interrupted=True)
    except BaseException as exc:
        reason = "setup error" if isinstance(exc, SetupError) else "error"
        _finish(study, clock, reason, {"trial": run.current, "message": describe_error(exc)},
                run.started)
        raise
    if run.setup_error is not None:
        details = {"trial": run.current, "message": describe_error(run.setup_error)}
        _finish(study, clock, "setup error", details, run.started)
        raise run.setup_error
    reason, details = _why_stopped(study, clock, n_trials, timeout, attempts, run.started)
    return _finish(study, clock, reason, details, run.started)


def max_attempts(remaining: int) -> int:
    """Trials a run may start to finish `remaining`: room to replace failed ones, bounded
    so a setup where every trial fails cannot loop forever."""
    return 0 if remaining == 0 else 2 * remaining + 3


def describe_error(exc: BaseException) -> str:
    """``"ExcType: message"`` on one line, short enough for a user attr."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line[:_MAX_REASON_CHARS]


class _Run:
    """The objective as this run calls it: records the worker, the phase and why it failed."""

    def __init__(self, study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
        self._objective = objective
        self._phase = (study.user_attrs.get(IDENTITY_KEY) or {}).get("phase")
        self.started = 0
        self.current: int | None = None
        self.setup_error: SetupError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        self.started += 1
        record_worker(trial)
        if self._phase:
            trial.set_user_attr(PHASE_KEY, self._phase)
        try:
            value = self._objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(FAIL_REASON_KEY, INTERRUPTED)
            raise
        except SetupError as exc:
            self.setup_error = exc
            trial.set_user_attr(FAIL_REASON_KEY, describe_error(exc))
            trial.study.stop()  # `catch` may swallow it; stopping ends the run after the tell
            raise
        except Exception as exc:
            if FAIL_REASON_KEY not in trial.user_attrs:  # the objective may have said why, more plainly
                trial.set_user_attr(FAIL_REASON_KEY, describe_error(exc))
            raise
        if not _is_number(value):
            # Optuna fails the trial itself (e.g. a diverged loss is nan); say why.
            trial.set_user_attr(FAIL_REASON_KEY, f"objective returned {value!r}")
        return value


def _is_number(value: Any) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _requeue_interrupted(study: optuna.Study, number: int | None) -> bool:
    if number is None:
        return False
    trial = study.get_trials(deepcopy=False)[number]
    # RUNNING: Ctrl-C landed outside the objective, before Optuna could fail the trial.
    was_interrupted = trial.state == TrialState.RUNNING or (
        trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_REASON_KEY) == INTERRUPTED
    )
    return was_interrupted and fail_and_requeue(study, trial, INTERRUPTED, count_as_retry=False)


def _why_stopped(
    study: optuna.Study,
    clock: StudyClock,
    n_trials: int | None,
    timeout: float | None,
    attempts: int | None,
    started: int,
) -> tuple[str, dict[str, Any]]:
    recorded = study.user_attrs.get(STOP_REASON_KEY)
    if recorded:  # a stop rule fired: its own figures
        return recorded, study.user_attrs.get(STOP_DETAILS_KEY) or {}
    finished = finished_trials(study)
    elapsed = clock.elapsed_s()
    figures = {"finished_trials": finished, "n_trials": n_trials,
               "elapsed_s": round(elapsed, 3), "timeout_s": timeout}
    if n_trials is not None and finished >= n_trials:
        return "budget", {**figures, "message": f"{finished} of {n_trials} trials finished."}
    if timeout is not None and elapsed >= timeout:
        return "timeout", {**figures, "message": (
            f"{elapsed:.1f} s spent across runs, the time budget is {timeout:g} s.")}
    if attempts is not None and started >= attempts:
        return "attempts", {**figures, "message": (
            f"{started} trials attempted but some failed: {finished} of {n_trials} finished; "
            "run again to finish the budget.")}
    return "stopped", {**figures, "message": "A callback stopped the study without a reason."}


def _record_stop(
    study: optuna.Study, reason: str | None, details: dict[str, Any] | None
) -> None:
    study.set_user_attr(STOP_REASON_KEY, reason)
    study.set_user_attr(STOP_DETAILS_KEY, details)


def _finish(
    study: optuna.Study,
    clock: StudyClock,
    reason: str,
    details: dict[str, Any],
    started: int = 0,
    *,
    interrupted: bool = False,
) -> RunResult:
    elapsed = clock.flush()
    _record_stop(study, reason, details)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return RunResult(
        study_name=study.study_name,
        n_finished=sum(t.state in FINISHED_STATES for t in trials),
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        ran_this_run=started,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else None,
        stop_reason=reason,
        stop_details=details,
        elapsed_s=elapsed,
        run_wall_s=clock.run_wall_s(),
        interrupted=interrupted,
    )
