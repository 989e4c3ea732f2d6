"""open_study identity checks, budget counting, StudyClock and stale-trial recovery,
on a real journal file and a real SQLite file."""

from __future__ import annotations

import os
import socket
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

import tunewise
from tunewise.errors import ConfigError
from tunewise.study.storage import open_storage
from tunewise.records import (
    ELAPSED_KEY,
    FAIL_REASON_KEY,
    HISTORY_KEY,
    IDENTITY_KEY,
    RETRIES_KEY,
    RETRY_OF_KEY,
    WORKER_KEY,
)
from tunewise.study.budget import StudyClock, finished_trials, remaining_trials
from tunewise.study.identity import make_identity, open_study
from tunewise.study.recovery import MAX_RETRIES, WORKER_DIED, record_worker, recover_stale_trials

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture
def storage(tmp_path):
    return open_storage(None, tmp_path)


# Only where what is stored and read back matters: a SQLite file costs ~0.1-0.4 s to create.
@pytest.fixture(params=["journal", "sqlite"])
def any_storage(request, tmp_path):
    url = None if request.param == "journal" else f"sqlite:///{tmp_path}/study.db"
    return open_storage(url, tmp_path)


def _identity(**changes):
    base = dict(phase="quick", space_fingerprint="space-a", data_fingerprint="data-a",
                model="resnet18", metric="macro_f1")
    return make_identity(**{**base, **changes})


def test_new_study_records_its_identity(storage):
    study = open_study("s", storage, identity=_identity())
    identity = study.user_attrs[IDENTITY_KEY]
    assert identity["space_fingerprint"] == "space-a"
    assert identity["direction"] == "maximize"
    assert identity["tunewise_version"] == tunewise.__version__


def test_same_identity_resumes(any_storage):
    first = open_study("s", any_storage, identity=_identity())
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = open_study("s", any_storage, identity=_identity())
    assert len(again.trials) == 2
    assert HISTORY_KEY not in again.user_attrs


def test_different_space_is_refused_naming_the_change(storage):
    open_study("s", storage, identity=_identity())
    with pytest.raises(ConfigError) as info:
        open_study("s", storage, identity=_identity(space_fingerprint="space-b", model="vit"))
    message = str(info.value)
    assert "space_fingerprint: 'space-a' -> 'space-b'" in message
    assert "model: 'resnet18' -> 'vit'" in message
    assert "force=True" in message and "--force" in message and "new study name" in message
    reloaded = optuna.load_study(study_name="s", storage=storage)
    assert reloaded.user_attrs[IDENTITY_KEY]["space_fingerprint"] == "space-a"


def test_force_proceeds_and_records_history(any_storage):
    open_study("s", any_storage, identity=_identity())
    study = open_study("s", any_storage, identity=_identity(data_fingerprint="data-b"), force=True)
    assert study.user_attrs[IDENTITY_KEY]["data_fingerprint"] == "data-b"
    [entry] = study.user_attrs[HISTORY_KEY]
    assert entry["forced"] is True
    assert entry["changed"] == {"data_fingerprint": ["data-a", "data-b"]}
    assert entry["previous"]["data_fingerprint"] == "data-a"


def test_phase_change_is_recorded_not_refused(storage):
    open_study("s", storage, identity=_identity())
    study = open_study("s", storage, identity=_identity(phase="focused"))
    assert study.user_attrs[IDENTITY_KEY]["phase"] == "focused"
    [entry] = study.user_attrs[HISTORY_KEY]
    assert entry["forced"] is False and entry["changed"] == {"phase": ["quick", "focused"]}


def test_direction_cannot_change_even_with_force(storage):
    open_study("s", storage, identity=_identity())
    with pytest.raises(ConfigError, match="created to maximize"):
        open_study("s", storage, direction="minimize", identity=_identity(), force=True)


def test_bad_direction_is_named(storage):
    with pytest.raises(ConfigError, match="did you mean 'maximize'"):
        open_study("s", storage, direction="maximise", identity=_identity())


def test_finished_counts_complete_and_pruned_only(storage):
    study = open_study("s", storage, identity=_identity())
    for state, value in [(TrialState.COMPLETE, 1.0), (TrialState.PRUNED, None),
                         (TrialState.FAIL, None), (TrialState.COMPLETE, 2.0)]:
        study.add_trial(optuna.create_trial(state=state, value=value))
    assert finished_trials(study) == 3
    assert remaining_trials(study, 10) == 7
    assert remaining_trials(study, 2) == 0


def test_clock_adds_up_across_runs(storage):
    study = open_study("s", storage, identity=_identity())
    study.set_user_attr(ELAPSED_KEY, 5.0)
    clock = StudyClock(study)
    assert 5.0 <= clock.elapsed_s() < 6.0
    written = clock.flush()
    resumed = StudyClock(optuna.load_study(study_name="s", storage=storage))
    assert resumed.elapsed_s() >= written >= 5.0


def _running_trial(study, worker_changes=None):
    """A RUNNING trial with params, claimed by this process (or as ``worker_changes`` say)."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    record_worker(trial)
    if worker_changes:
        worker = {**study.trials[trial.number].user_attrs[WORKER_KEY], **worker_changes}
        trial.set_user_attr(WORKER_KEY, worker)
    return study.trials[trial.number]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_recover_fails_and_requeues_dead_workers_trials(any_storage):
    study = open_study("s", any_storage, identity=_identity())
    study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1e-2, log=True), n_trials=1)
    gone = _running_trial(study, {"pid": _dead_pid()})
    reused = _running_trial(study, {"started": "proc:0"})  # our pid, another process start
    assert recover_stale_trials(study) == [gone.number, reused.number]

    trials = study.trials
    assert trials[0].state == TrialState.COMPLETE
    for old in (gone, reused):
        assert trials[old.number].state == TrialState.FAIL
        assert trials[old.number].user_attrs[FAIL_REASON_KEY] == WORKER_DIED
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[RETRY_OF_KEY] for t in waiting] == [gone.number, reused.number]
    assert [t.user_attrs[RETRIES_KEY] for t in waiting] == [1, 1]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [gone.params, reused.params]
    assert recover_stale_trials(study) == []


def test_recover_leaves_live_foreign_and_unclaimed_trials_alone(storage):
    study = open_study("s", storage, identity=_identity())
    _running_trial(study)  # this process: alive
    _running_trial(study, {"host": socket.gethostname() + "-other", "pid": _dead_pid()})
    _running_trial(study, {"pid": _dead_pid(), "trial": 99})  # record copied from trial 99
    study.ask()  # not claimed yet
    assert recover_stale_trials(study) == []
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 4


def test_recover_gives_up_after_max_retries(storage):
    study = open_study("s", storage, identity=_identity())
    study.enqueue_trial({"lr": 1e-3}, user_attrs={RETRIES_KEY: MAX_RETRIES})
    trial = _running_trial(study, {"pid": _dead_pid()})
    assert trial.params == {"lr": 1e-3}
    assert recover_stale_trials(study) == []
    assert study.trials[trial.number].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_worker_record_names_this_process(storage):
    study = open_study("s", storage, identity=_identity())
    worker = _running_trial(study).user_attrs[WORKER_KEY]
    assert worker["host"] == socket.gethostname() and worker["pid"] == os.getpid()
    assert worker["trial"] == 0 and worker["started"]
