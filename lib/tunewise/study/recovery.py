"""Crash recovery: who runs each trial, and what to do when that worker died.

Each trial records its worker (host, pid namespace, pid, process start) in
``tunewise.worker``; ``recover_stale_trials`` fails the RUNNING trials whose worker on this
host is gone and queues their parameters again (``tunewise.retry_of``, ``tunewise.retries``).
RDB storages also use Optuna's heartbeat (see storage.py).
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tunewise.records import FAIL_REASON_KEY, RETRIES_KEY, RETRY_OF_KEY, WORKER_KEY, storage_of

WORKER_DIED = "worker died"
# A trial whose worker dies this many times is probably what kills it (e.g. out of memory).
MAX_RETRIES = 3

_log = logging.getLogger(__name__)


def record_worker(trial: optuna.Trial) -> None:
    """Record who runs ``trial``, in one write so a kill cannot leave half a record.

    Its "trial" field ties it to this trial: Optuna's heartbeat retry copies user attrs
    into the retried trial, and a copied record must not be mistaken for its worker.
    """
    pid = os.getpid()
    trial.set_user_attr(
        WORKER_KEY,
        {"host": socket.gethostname(), "pidns": _pid_namespace(), "pid": pid,
         "started": _process_stamp(pid), "trial": trial.number},
    )


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker died and queue their parameters again.

    A worker is known dead only on this host (its pid is gone, a zombie, or reused); trials
    run on other hosts are left alone. On RDB storages Optuna's heartbeat also fails (and
    retries) trials silent for longer than the grace period. Returns the failed trials'
    numbers. Finished trials are never touched.
    """
    recovered = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if _worker_is_dead(t) and fail_and_requeue(study, t, WORKER_DIED, count_as_retry=True)
    ]
    recovered += _fail_heartbeat_stale(study)
    for number in recovered:
        _log.warning("trial %d: its worker died; marked FAIL and queued again", number)
    return recovered


def fail_and_requeue(
    study: optuna.Study, trial: FrozenTrial, reason: str, *, count_as_retry: bool
) -> bool:
    """Mark ``trial`` FAIL with ``fail_reason`` (if still RUNNING), then queue its params.

    Returns False when another process settled the trial first (so only one of them
    requeues it) or when it has been retried MAX_RETRIES times already.
    """
    storage = storage_of(study)  # Study has no public API to settle another worker's trial.
    if trial.state == TrialState.RUNNING:
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_KEY, reason)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
    retries = int(trial.user_attrs.get(RETRIES_KEY, 0)) + int(count_as_retry)
    if retries > MAX_RETRIES:
        _log.warning("trial %d failed %d times (%s): not queued again", trial.number,
                     retries, reason)
        return False
    study.enqueue_trial(
        dict(trial.params), user_attrs={RETRY_OF_KEY: trial.number, RETRIES_KEY: retries}
    )
    return True


def _fail_heartbeat_stale(study: optuna.Study) -> list[int]:
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op without a heartbeat
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number in running]


def _worker_is_dead(trial: FrozenTrial) -> bool:
    worker = trial.user_attrs.get(WORKER_KEY)
    if not isinstance(worker, dict) or worker.get("trial") != trial.number:
        return False  # not claimed yet, or a record copied from an earlier trial
    if worker.get("host") != socket.gethostname():
        return False  # cannot check another machine's processes
    if worker.get("pidns", _pid_namespace()) != _pid_namespace():
        return False  # another container on this host: its pids are not ours to see
    stamp = _process_stamp(int(worker["pid"]))
    return stamp is None or stamp != worker.get("started")


def _pid_namespace() -> str | None:
    """Which pid namespace this process lives in (containers sharing a hostname differ)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_stamp(pid: int) -> str | None:
    """What identifies process ``pid`` across pid reuse; None when it is not running."""
    if Path("/proc/self/stat").exists():
        return _proc_stamp(pid)
    try:
        import psutil  # optional: the only portable source of process start times
    except ImportError:
        return "alive" if _pid_exists(pid) else None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"psutil:{process.create_time()}"
    except psutil.Error:
        return None


def _proc_stamp(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: killed but not yet reaped
        return None
    return "proc:" + fields[19]  # field 22: start time in clock ticks since boot


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
