"""A study that knows what it is, what it has spent, and who is running its trials.

- Identity: ``tunewise.identity`` (study user attr) records the phase, search-space and
  dataset fingerprints, model, metric, direction and tunewise version. Resuming a study
  made for a different setup is refused (its trials would not be comparable) unless forced;
  every change is appended to ``tunewise.identity_history``.
- Budget: ``finished_trials`` counts COMPLETE + PRUNED trials across every run;
  ``StudyClock`` keeps the time spent across runs in ``tunewise.elapsed_s``.
- Crash recovery: each trial records its worker (host, pid namespace, pid, process start)
  in ``tunewise.worker``; ``recover_stale_trials`` fails the RUNNING trials whose worker on
  this host is gone and queues their parameters again. RDB storages also use Optuna's
  heartbeat (see storage.py).
- Parameters: ``record_params`` keeps the run parameters a study was prepared with
  (``tunewise.params``, the storage URL left out), so a worker on another machine can join
  the study knowing only its name and storage.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tunewise import __version__
from tunewise.errors import ConfigError, did_you_mean

IDENTITY_KEY = "tunewise.identity"
HISTORY_KEY = "tunewise.identity_history"
ELAPSED_KEY = "tunewise.elapsed_s"
WORKER_KEY = "tunewise.worker"
RETRY_OF_KEY = "tunewise.retry_of"
RETRIES_KEY = "tunewise.retries"
FAIL_REASON_KEY = "fail_reason"
WORKER_DIED = "worker died"
PARAMS_KEY = "tunewise.params"
SPACE_ATTR = "tunewise.search_space"  # the space a study searches, for the phases after it
# The untouched test split (issue 21): its identity is a field of tunewise.identity, and the
# final phase records its one score on it under TEST_SCORE_KEY.
TEST_SPLIT_FIELD = "test_split"  # {fraction, seed, n, indices_sha256}
TEST_SCORE_KEY = "tunewise.test_score"  # {"value": macro-F1 on the test split, ...}
VALIDATION_KEY = "tunewise.validation"  # the validation phase's result, on the study it validated
# Never recorded in the study: the storage URL may hold a password, and where the study
# lives is what a joining worker is told, not what it reads.
UNRECORDED_PARAMS = ("storage",)

# Resuming with any of these changed mixes incomparable trials: refused unless forced.
GUARDED_FIELDS = ("space_fingerprint", "data_fingerprint", "model", "metric", "direction", TEST_SPLIT_FIELD)
DIRECTIONS = ("maximize", "minimize")
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial whose worker dies this many times is probably what kills it (e.g. out of memory).
MAX_RETRIES = 3

_log = logging.getLogger(__name__)


def make_identity(
    *,
    phase: str,
    space_fingerprint: str,
    data_fingerprint: str,
    model: str,
    metric: str,
    direction: str = "maximize",
    test_split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``tunewise.identity`` dict for a study (open_study adds the tunewise version).

    ``test_split``: the held-out test split's identity (splits.HeldOut.identity()); a
    resume with another one is refused like a change of data."""
    identity = {
        "phase": phase,
        "space_fingerprint": space_fingerprint,
        "data_fingerprint": data_fingerprint,
        "model": model,
        "metric": metric,
        "direction": direction,
        "tunewise_version": __version__,
    }
    if test_split is not None:
        identity[TEST_SPLIT_FIELD] = dict(test_split)
    return identity


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    *,
    direction: str = "maximize",
    directions: list[str] | None = None,
    identity: dict[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    force: bool = False,
) -> optuna.Study:
    """Create study ``name`` or resume it, refusing (ConfigError) a resume for another setup.

    ``directions`` (one per objective) makes a multi-objective study instead of ``direction``.
    A change of phase or tunewise version is recorded, never refused. A change of a
    GUARDED_FIELDS value is refused unless ``force``; the stored directions can never change.
    """
    if not name:
        raise ConfigError("study name is empty: give each study a name so it can be resumed")
    wanted = list(directions) if directions else [direction]
    for d in wanted:
        if d not in DIRECTIONS:
            raise ConfigError(
                f"direction {d!r} is not allowed{did_you_mean(d, DIRECTIONS)}; use one of {', '.join(DIRECTIONS)}"
            )
    new = _as_stored({**identity, "direction": ",".join(wanted), "tunewise_version": __version__})
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=wanted,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != wanted:
        raise ConfigError(
            f"study {name!r} was created to {', '.join(stored)} and cannot be resumed to "
            f"{', '.join(wanted)}: Optuna cannot change a study's direction; use a new study name"
        )
    _check_identity(study, new, force)
    return study


def _as_stored(identity: dict[str, Any]) -> dict[str, Any]:
    # Compare what the storage will give back (tuples come back as lists, and so on).
    return json.loads(json.dumps(identity))


def _check_identity(study: optuna.Study, new: dict[str, Any], force: bool) -> None:
    old = study.user_attrs.get(IDENTITY_KEY)
    if old == new:
        return
    if old is None:
        study.set_user_attr(IDENTITY_KEY, new)
        return
    changed = {k: [old.get(k), new.get(k)] for k in {*old, *new} if old.get(k) != new.get(k)}
    # A field an older study never recorded cannot conflict: it is only recorded.
    conflicts = {k: v for k, v in changed.items() if k in GUARDED_FIELDS and k in old}
    if conflicts and not force:
        raise ConfigError(_conflict_message(study.study_name, conflicts))
    entry = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "forced": bool(conflicts),
        "changed": changed,
        "previous": old,
    }
    study.set_user_attr(HISTORY_KEY, [*study.user_attrs.get(HISTORY_KEY, []), entry])
    study.set_user_attr(IDENTITY_KEY, new)
    if conflicts:
        _log.warning("study %r resumed with force: %s", study.study_name, _diff_lines(conflicts))


def _conflict_message(name: str, conflicts: dict[str, list[Any]]) -> str:
    return (
        f"study {name!r} was made for a different setup, so its trials are not comparable "
        f"with this run:\n{_diff_lines(conflicts)}\n"
        "To resume it anyway pass force=True (CLI: --force); to keep both, use a new study name."
    )


def _diff_lines(changes: dict[str, list[Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changes.items()))


def finished_trials(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials in the study (failed trials do not use up the budget)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    """How many more trials must finish for the study to hold ``n_trials`` finished ones."""
    return max(0, n_trials - finished_trials(study))


class StudyClock:
    """Time spent on a study across all its runs (``tunewise.elapsed_s``).

    Counts from construction. Also an Optuna callback: passed to ``study.optimize`` it
    flushes after every trial, so stop rules reading ``tunewise.elapsed_s`` see fresh time.
    Several workers sharing a study each write earlier-runs + own wall time, so the value
    is the study's wall time, not the sum of worker time.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study
        self._before_s = float(study.user_attrs.get(ELAPSED_KEY, 0.0))
        self._started = time.monotonic()

    def run_wall_s(self) -> float:
        """Seconds since this run started."""
        return time.monotonic() - self._started

    def elapsed_s(self) -> float:
        """Seconds spent on the study: earlier runs plus this run so far."""
        return self._before_s + self.run_wall_s()

    def flush(self) -> float:
        """Store elapsed_s() in the study and return it."""
        elapsed = round(self.elapsed_s(), 3)
        self._study.set_user_attr(ELAPSED_KEY, elapsed)
        return elapsed

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.flush()


def record_params(study: optuna.Study, p: dict[str, Any]) -> None:
    """Store the run parameters ``p`` (minus UNRECORDED_PARAMS) in the study, if changed."""
    kept = {k: v for k, v in p.items() if k not in UNRECORDED_PARAMS}
    recorded = json.loads(json.dumps(kept, default=str))  # as the storage will give it back
    if study.user_attrs.get(PARAMS_KEY) != recorded:
        study.set_user_attr(PARAMS_KEY, recorded)


def recorded_params(study: optuna.Study) -> dict[str, Any]:
    """The parameters ``record_params`` stored; ConfigError if the study has none."""
    recorded = study.user_attrs.get(PARAMS_KEY)
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"study {study.study_name!r} has no recorded parameters ({PARAMS_KEY}): it was not "
            "prepared by this version of tunewise; start it with `tunewise run` or "
            "`tunewise tune` first, then join it"
        )
    return dict(recorded)


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
    storage = study._storage  # Study has no public API to settle another worker's trial.
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
