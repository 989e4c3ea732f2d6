"""Several workers on one study in a real PostgreSQL server (started for this module by
conftest_pg.py): the shared budget, a killed worker recovered by the process check and by
the heartbeat, the server going away for good or for a moment, and a second process
joining a study. Skipped only where the PostgreSQL server binaries are not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest_pg import pg_url, postgres  # noqa: F401  (fixtures)
from test_workers import (
    EXIT_STORAGE_LOST,
    FINISHED,
    SMALL_SPACE,
    _env,
    check_four_workers_share_the_budget,
    check_killed_worker_is_recovered,
    open_test_study,
    running_in,
    snapshot,
    start_worker,
    wait_for,
)
from tunewise import params as P
from tunewise.phases import tuning
from tunewise.study.runner import run_trials
from tunewise.phases.workers import join_study
from tunewise.records import BASELINE_KEY, FAIL_REASON_KEY, RETRY_OF_KEY, WORKER_KEY
from tunewise.study.budget import finished_trials
from tunewise.study.recovery import WORKER_DIED

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def _quick(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.set_user_attr("x2", x * x)
    return x * x


def test_four_workers_finish_exactly_the_budget_on_postgresql(pg_url, tmp_path):
    check_four_workers_share_the_budget(pg_url, tmp_path)


def test_a_killed_worker_is_recovered_on_postgresql(pg_url, tmp_path):
    check_killed_worker_is_recovered(pg_url, tmp_path)


def test_a_killed_worker_on_another_machine_is_recovered_by_the_heartbeat(pg_url, tmp_path):
    fast_heartbeat = {"TW_HEARTBEAT_S": "1", "TW_GRACE_S": "2"}
    n_trials = 5
    elsewhere = start_worker(pg_url, tmp_path, n_trials, 0.6, name="elsewhere",
                             env={**fast_heartbeat, "TW_FAKE_HOST": "another-machine"})
    study = open_test_study(pg_url, tmp_path)
    try:
        [victim] = wait_for(lambda: finished_trials(study) >= 1 and [t for t in running_in(study, elsewhere) if t.params],
                            [elsewhere])
        elsewhere.kill()
        elsewhere.wait()
    finally:
        elsewhere.kill()
    assert victim.user_attrs[WORKER_KEY]["host"] == "another-machine"  # no process to check here
    before = snapshot(study)

    here = start_worker(pg_url, tmp_path, n_trials, 0.3, name="here", env=fast_heartbeat)
    assert here.wait(timeout=60) == 0, here.log.read_text()
    trials = study.get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert finished_trials(study) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    after = snapshot(study)
    assert {n: after[n] for n in before} == before


def test_losing_the_server_retries_then_stops_and_the_study_is_whole_after_restart(postgres, pg_url, tmp_path):
    n_trials = 10
    workers = [start_worker(pg_url, tmp_path, n_trials, 0.9, name=f"w{i}", env={"TUNEWISE_RETRY_S": "3"})
               for i in range(2)]
    study = open_test_study(pg_url, tmp_path)
    wait_for(lambda: finished_trials(study) >= 2 and all(running_in(study, w) for w in workers), workers)
    before = snapshot(study)

    postgres.stop("immediate")  # as if the server crashed
    lost_at = time.monotonic()
    codes = [w.wait(timeout=60) for w in workers]
    took = time.monotonic() - lost_at
    logs = [w.log.read_text() for w in workers]
    assert codes == [EXIT_STORAGE_LOST] * 2, logs
    assert 2.5 < took < 15, f"gave up after {took:.1f} s with a 3 s retry window"
    for log in logs:
        assert "retrying in" in log  # it did retry, with backoff
        assert "tunewise: error: lost the storage postgresql://postgres@127.0.0.1" in log
        assert "Traceback" not in log

    postgres.start()
    study = open_test_study(pg_url, tmp_path)
    after = snapshot(study)
    assert {n: after[n] for n in before} == before  # nothing finished was lost
    in_flight = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert in_flight, "the trials in flight stay RUNNING until recovered"

    result = run_trials(study, _quick, n_trials=n_trials, timeout=None)  # the next worker
    assert result.n_finished == n_trials == finished_trials(study)
    trials = study.get_trials()
    for number in in_flight:
        assert trials[number].state == TrialState.FAIL
        assert trials[number].user_attrs[FAIL_REASON_KEY] == WORKER_DIED
        assert [t.state for t in trials if t.user_attrs.get(RETRY_OF_KEY) == number] == [TrialState.COMPLETE]
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_a_short_outage_is_ridden_out(postgres, pg_url, tmp_path):
    n_trials = 8
    workers = [start_worker(pg_url, tmp_path, n_trials, 0.6, name=f"w{i}", env={"TUNEWISE_RETRY_S": "30"})
               for i in range(2)]
    study = open_test_study(pg_url, tmp_path)
    wait_for(lambda: finished_trials(study) >= 2, workers)
    postgres.stop("immediate")
    time.sleep(1.5)
    postgres.start()
    codes = [w.wait(timeout=60) for w in workers]
    logs = [w.log.read_text() for w in workers]
    assert codes == [0, 0], logs
    assert any("reachable again" in log for log in logs)
    study = open_test_study(pg_url, tmp_path)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert finished_trials(study) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert all(t.value == t.user_attrs["x2"] for t in study.get_trials(states=FINISHED))


def test_a_second_process_joins_a_study_on_postgresql(pg_url, tmp_path):
    p = P.resolve(overrides={
        "run_dir": str(tmp_path / "here"), "storage": pg_url, "study_name": "joined", "dataset": "digits",
        "img_size": 32, "model": "test_convnext", "n_trials": 6, "epochs": 1, "batch_size": 64,
        "hflip": False, "search_space": SMALL_SPACE, "pruner": "none", "device": "cpu",
    })
    prep = tuning.prepare(p)  # what `tunewise run` does before its workers start (it records p)
    tuning.start_new_study(prep)

    # "Another machine": only the study's name and storage, as `tunewise worker` is given.
    other = subprocess.Popen(
        [sys.executable, "-m", "tunewise.phases.workers", "--study", "joined", "--storage", pg_url,
         "--threads", "1", "--set", f"run_dir={tmp_path / 'there'}"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    other.log = tmp_path / "unused"
    study = prep.study
    wait_for(lambda: finished_trials(study) >= 1 or running_in(study, other), [], limit_s=60)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each, as run_workers would give them
    try:
        summary = join_study("joined", pg_url, overrides={"run_dir": str(tmp_path / "here")})
    finally:
        torch.set_num_threads(threads)
    output, _ = other.communicate(timeout=60)
    assert other.returncode == 0, output

    assert summary["n_finished"] == 6 and summary["stop_reason"] == "budget"
    trials = study.get_trials()
    assert finished_trials(study) == 6 and len(trials) == 6
    pids = {t.user_attrs[WORKER_KEY]["pid"] for t in trials}
    assert pids == {other.pid, os.getpid()}, "both processes ran trials"
    assert sum(bool(t.user_attrs.get(BASELINE_KEY)) for t in trials) == 1
