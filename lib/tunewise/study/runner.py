"""Run a study's trials within a budget that spans every run of it, and say why it stopped.

``run_trials`` works with any ``objective(trial) -> float``. Budgets are study-wide:
``n_trials`` counts finished (COMPLETE + PRUNED) trials across all runs and ``timeout``
counts time across all runs, so a resumed run only does what is left. Several workers
(processes, machines) can run one study at once and still finish exactly ``n_trials``:
before each trial a worker claims a slot under the study's lock (``storage.slot_lock``),
counting finished trials and trials running in live workers. Around Optuna's own loop it
adds:

- recovery of trials left RUNNING by a dead worker (failed, then queued again);
- ``fail_reason`` on every failed trial (``"ExcType: message"``), the study going on,
  except for SetupError (every trial would fail): it stops the study and is re-raised;
- Ctrl-C: the running trial ends FAILED (``fail_reason`` "interrupted") and is queued for
  the next run, the clock is flushed, and a RunResult with ``interrupted=True`` is
  returned so a notebook can show it (the CLI exits 130). A Ctrl-C that lands while
  Optuna is writing the study (creating or telling a trial) takes effect just after;
- the stop reason, in study user attrs ``tunewise.stop_reason`` / ``tunewise.stop_details``
  (the same keys stop rules write: a name, and a dict of figures with a ``message``); a
  stop rule that fires in one worker stops the others at their next claim;
- a storage lost mid-study (see storage.py): ``StorageLost`` is raised and nothing more
  is written; the trial in flight is recovered by the next worker.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise import units
from tunewise.errors import SetupError
from tunewise.records import (
    storage_of,
    ELAPSED_KEY,
    FAIL_REASON_KEY,
    FINISHED_STATES,
    PHASE_KEY,
    STOP_DETAILS_KEY,
    STOP_REASON_KEY,
    WORKER_KEY,
    best_trial,
    identity,
)
from tunewise.study.budget import StudyClock, finished_trials, remaining_trials
from tunewise.study.recovery import fail_and_requeue, record_worker, recover_stale_trials
from tunewise.study.storage import StorageLost, lost_heartbeats, outage_of, slot_lock
INTERRUPTED = "interrupted"
_MAX_REASON_CHARS = 500
# Reasons the runner records with the trial they happened on; a stop rule records its
# trial too, under its own name.
_RUNNER_TRIAL_REASONS = (INTERRUPTED, "error", "setup error")
WAIT_POLL_S = 0.5  # how often a worker with no slot left checks the trials still running
WAIT_NOTE_S = 600.0  # how often a long wait for other workers' trials is logged

_log = logging.getLogger(__name__)

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
    sigint = _HeldSigint()
    sigint.hold()
    try:
        result = _run(study, objective, n_trials, timeout, list(callbacks), tuple(catch),
                      show_progress_bar, clock, sigint)
    except BaseException:
        sigint.release()
        raise
    if sigint.release():
        raise KeyboardInterrupt  # it came while the study was being written: now it is safe
    return result


def _run(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int | None,
    timeout: float | None,
    callbacks: list[Callback],
    catch: tuple[type[Exception], ...],
    show_progress_bar: bool,
    clock: StudyClock | None,
    sigint: _HeldSigint,
) -> RunResult:
    recover_stale_trials(study)
    clock = clock if clock is not None else StudyClock(study)
    remaining = None if n_trials is None else remaining_trials(study, n_trials)
    attempts = None if remaining is None else max_attempts(remaining)
    time_left = None if timeout is None else timeout - clock.elapsed_s()
    if remaining == 0 or (time_left is not None and time_left <= 0):
        return nothing_to_do(study, n_trials, timeout, clock.run_wall_s())
    _record_stop(study, None, None)  # a reason left by an earlier run is not this run's

    gate = None if n_trials is None else _Gate(study, n_trials, clock, timeout, sigint)
    run = _Run(study, objective, sigint, claimed=gate.release if gate else None)
    all_callbacks = [clock, *callbacks]  # clock first: stop rules see this trial's time
    if gate is not None:
        all_callbacks.append(gate)  # last: claims the next trial's slot, or stops the run
    try:
        if gate is None or gate.claim():
            study.optimize(
                run,
                n_trials=attempts,
                timeout=time_left,
                callbacks=all_callbacks,
                catch=catch,
                show_progress_bar=show_progress_bar,
            )
    except KeyboardInterrupt:
        requeued = _requeue_interrupted(study, run.current)
        details = {"trial": run.current, "requeued": requeued,
                   "message": f"Ctrl-C during trial {run.current}"
                   + ("; it is queued for the next run." if requeued else ".")}
        return _finish(study, clock, INTERRUPTED, details, run.started, interrupted=True)
    except BaseException as exc:
        outage = outage_of(storage_of(study))
        if outage is not None and outage.lost is not None:
            # Whatever surfaced (Optuna may trip over the lost storage while failing the
            # trial), nothing more can be written: say so plainly.
            raise StorageLost(outage.lost) from None
        reason = "setup error" if isinstance(exc, SetupError) else "error"
        if isinstance(exc, SetupError):
            exc.during_study = True
        _finish(study, clock, reason, {"trial": run.current, "message": describe_error(exc)},
                run.started)
        raise
    finally:
        if gate is not None:
            gate.release()
    if run.setup_error is not None:
        details = {"trial": run.current, "message": describe_error(run.setup_error)}
        _finish(study, clock, "setup error", details, run.started)
        run.setup_error.during_study = True  # the study ran and stopped: a failed run (exit 1)
        raise run.setup_error
    reason, details = _why_stopped(study, clock, n_trials, timeout, attempts, run.started)
    return _finish(study, clock, reason, details, run.started)


def nothing_to_do(study: optuna.Study, n_trials: int | None, timeout: float | None,
                  run_wall_s: float = 0.0) -> RunResult:
    """The RunResult of a run that finds the budget spent, writing nothing to the study
    unless its recorded stop reason says otherwise (a resume or join that runs no trial
    leaves the study's record as it was: no clock, no reason rewritten)."""
    attrs = study.user_attrs
    elapsed = float(attrs.get(ELAPSED_KEY, 0.0))
    finished = finished_trials(study)
    figures = {"finished_trials": finished, "n_trials": n_trials, "elapsed_s": round(elapsed, 3), "timeout_s": timeout}
    if n_trials is not None and finished >= n_trials:
        reason, details = "budget", {**figures, "message": f"{finished} of {n_trials} trials finished."}
    else:
        reason, details = "timeout", {**figures, "message": (
            f"{units.duration(elapsed)} spent across runs, the time budget is {units.duration(timeout or 0)}.")}
    if attrs.get(STOP_REASON_KEY) == reason and isinstance(attrs.get(STOP_DETAILS_KEY), dict):
        details = attrs[STOP_DETAILS_KEY]  # as the run that spent it said
    else:
        _record_stop(study, reason, details)
    return study_result(study, reason, details, ran=0, elapsed_s=elapsed, run_wall_s=run_wall_s)


def max_attempts(remaining: int) -> int:
    """Trials a run may start to finish `remaining`: room to replace failed ones, bounded
    so a setup where every trial fails cannot loop forever."""
    return 0 if remaining == 0 else 2 * remaining + 3


def describe_error(exc: BaseException) -> str:
    """``"ExcType: message"`` on one line, short enough for a user attr."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line[:_MAX_REASON_CHARS]


class _HeldSigint:
    """Ctrl-C held back while the study is being written, acted on in safe ``window``s.

    A KeyboardInterrupt in the middle of Optuna's bookkeeping (creating a trial, telling
    its result, a journal append) can leave a trial RUNNING that nobody runs, or crash
    Optuna's loop; so during a run SIGINT only takes effect inside the objective and
    while a worker waits for a slot. Only in the main thread, and only over Python's
    default handler (a notebook kernel or an application with its own is left alone).
    """

    def __init__(self) -> None:
        self._default = None
        self._pending = False

    def hold(self) -> None:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._default = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum, frame) -> None:
        self._pending = True

    @contextmanager
    def window(self):
        """Ctrl-C acts at once in here (one held back meanwhile is raised on entry)."""
        if self._default is None:
            yield
            return
        signal.signal(signal.SIGINT, self._default)
        try:
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt
            yield
        finally:
            signal.signal(signal.SIGINT, self._note)

    def release(self) -> bool:
        """Restore the default handler; True if a Ctrl-C is still held back."""
        if self._default is not None:
            signal.signal(signal.SIGINT, self._default)
            self._default = None
        pending, self._pending = self._pending, False
        return pending


class _Gate:
    """Claims one of the study's ``n_trials`` slots before each trial, across all workers.

    Under the study's slot lock it fails and requeues the trials of dead workers, then
    counts the finished trials and the trials running in live workers. If there is room it
    keeps the lock until this worker's next trial exists and names its worker (``release``,
    called by the objective), so no two workers take the last slot. If the trials running
    elsewhere would fill the budget it waits for them: one may still fail, or its worker
    die, and leave a slot. No claim once a stop rule fired in any worker or time is up.
    """

    def __init__(self, study: optuna.Study, n_trials: int, clock: StudyClock,
                 timeout: float | None, sigint: _HeldSigint) -> None:
        self._study = study
        self._n_trials = n_trials
        self._clock = clock
        self._timeout = timeout
        self._sigint = sigint
        self._lock = slot_lock(study)
        self._held = False
        self._waiting_since: float | None = None
        self._told_lost: set[int] = set()  # trials whose lost heartbeat was said

    def claim(self) -> bool:
        """True with the lock held (a slot is free), False when this worker should stop."""
        with self._sigint.window():
            pass  # a Ctrl-C during the last trial's bookkeeping stops here, between trials
        while not self._rule_stopped() and not self._timed_out():
            self._lock.acquire()
            self._held = True
            try:
                recover_stale_trials(self._study)
                finished, running = _slots_taken(self._study)
            except BaseException:
                self.release()
                raise
            if finished + running < self._n_trials:
                self._waiting_since = None
                return True
            self.release()
            if finished >= self._n_trials:
                return False
            self._note_wait(running)
            with self._sigint.window():
                time.sleep(WAIT_POLL_S)
        return False

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.claim():
            study.stop()

    def _note_wait(self, running: int) -> None:
        lost = {n: left for n, left in lost_heartbeats(self._study).items() if n not in self._told_lost}
        if lost:  # said once per trial: what this worker waits for, and for how long at most
            self._told_lost.update(lost)
            _log.warning("waiting up to %.0f s for a lost worker's heartbeat (trial %s): its trial is "
                         "failed and queued again once its last heartbeat is older than the grace period",
                         max(lost.values()), ", ".join(map(str, sorted(lost))))
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = self._last_note = now
            _log.info("%d trial(s) running in other workers would fill the budget: waiting for "
                      "them (one may fail and leave a slot)", running)
        elif now - self._last_note >= WAIT_NOTE_S:
            self._last_note = now
            _log.warning("still waiting after %.0f min for %d trial(s) running in other workers; "
                         "a worker on another machine that died is only noticed by the heartbeat "
                         "of a database storage", (now - self._waiting_since) / 60, running)

    def _timed_out(self) -> bool:
        return self._timeout is not None and self._clock.elapsed_s() >= self._timeout

    def _rule_stopped(self) -> bool:
        attrs = self._study.user_attrs
        reason, details = attrs.get(STOP_REASON_KEY), attrs.get(STOP_DETAILS_KEY)
        return (bool(reason) and reason not in _RUNNER_TRIAL_REASONS
                and isinstance(details, dict) and "trial" in details)


def _slots_taken(study: optuna.Study) -> tuple[int, int]:
    """(finished trials, trials running in a worker that claimed them)."""
    states = (*FINISHED_STATES, TrialState.RUNNING)
    finished = running = 0
    for t in study.get_trials(deepcopy=False, states=states):
        if t.state != TrialState.RUNNING:
            finished += 1
        else:
            worker = t.user_attrs.get(WORKER_KEY)
            # A RUNNING trial no worker claimed was left by a process that died between
            # creating it and starting it (or by plain Optuna): it holds no slot.
            running += isinstance(worker, dict) and worker.get("trial") == t.number
    return finished, running


class _Run:
    """The objective as this run calls it: records the worker, the phase and why it failed."""

    def __init__(self, study: optuna.Study, objective: Callable[[optuna.Trial], float],
                 sigint: _HeldSigint, claimed: Callable[[], None] | None = None) -> None:
        self._objective = objective
        self._sigint = sigint
        self._claimed = claimed
        self._phase = identity(study).get("phase")
        self.started = 0
        self.current: int | None = None
        self.setup_error: SetupError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        self.started += 1
        try:
            record_worker(trial)
            if self._claimed is not None:
                self._claimed()  # the trial is ours and says so: the next claim may count it
            if self._phase:
                trial.set_user_attr(PHASE_KEY, self._phase)
            with self._sigint.window():
                value = self._objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(FAIL_REASON_KEY, INTERRUPTED)
            raise
        except StorageLost:
            raise  # nothing can be recorded; run_trials says what happened
        except SetupError as exc:
            self.setup_error = exc
            trial.set_user_attr(FAIL_REASON_KEY, describe_error(exc))
            trial.study.stop()  # `catch` may swallow it; stopping ends the run after the tell
            raise
        except Exception as exc:
            if FAIL_REASON_KEY not in trial.user_attrs:  # the objective may have said why, more plainly
                trial.set_user_attr(FAIL_REASON_KEY, describe_error(exc))
            raise
        if not _optuna_accepts(value):
            # Optuna fails the trial itself (e.g. a diverged loss is nan); say why.
            trial.set_user_attr(FAIL_REASON_KEY, f"objective returned {value!r}")
        return value


def _optuna_accepts(value: Any) -> bool:
    """Whether Optuna will complete a trial returning ``value`` (any float but NaN, numpy
    scalars included): not the parameter check errors.is_number."""
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
            f"{units.duration(elapsed)} spent across runs, the time budget is {units.duration(timeout)}.")}
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
    return study_result(study, reason, details, ran=started, elapsed_s=elapsed, run_wall_s=clock.run_wall_s(),
                        interrupted=interrupted)


def study_result(study: optuna.Study, reason: str, details: dict[str, Any], *, ran: int, elapsed_s: float,
                 run_wall_s: float, interrupted: bool = False) -> RunResult:
    """The RunResult of ``study`` as it stands, for a run that started ``ran`` trials."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(study, complete)
    return RunResult(
        study_name=study.study_name,
        n_finished=sum(t.state in FINISHED_STATES for t in trials),
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        ran_this_run=ran,
        best_value=best.values[0] if best else None,
        best_params=dict(best.params) if best else None,
        stop_reason=reason,
        stop_details=details,
        elapsed_s=elapsed_s,
        run_wall_s=run_wall_s,
        interrupted=interrupted,
    )
