"""run_trials: study-wide budgets across resumes, failures, and real workers that are
killed (SIGKILL) or interrupted (SIGINT) mid-trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tunewise
from tunewise.errors import SetupError
from tunewise.records import PHASE_KEY, STOP_DETAILS_KEY, STOP_REASON_KEY
from tunewise.study.runner import max_attempts, run_trials
from tunewise.study.storage import open_storage
from tunewise.records import ELAPSED_KEY, FAIL_REASON_KEY, RETRY_OF_KEY, WORKER_KEY
from tunewise.study.budget import StudyClock, finished_trials
from tunewise.study.identity import make_identity, open_study
from tunewise.study.recovery import WORKER_DIED

optuna.logging.set_verbosity(optuna.logging.CRITICAL)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

IDENTITY = dict(phase="quick", space_fingerprint="s1", data_fingerprint="d1",
                model="resnet18", metric="macro_f1")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A worker process: opens the run's journal study and runs it; each trial touches
# started-<number> in the run folder, then sleeps, so the test knows when to strike.
WORKER = """
import sys, time
from pathlib import Path
import optuna
from tunewise.study.runner import run_trials
from tunewise.study.storage import open_storage
from tunewise.study.identity import make_identity, open_study

run_dir, n_trials, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.CRITICAL)
identity = make_identity(**{identity!r})
study = open_study("w", open_storage(None, run_dir), identity=identity)

def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    Path(run_dir, f"started-{{trial.number}}").touch()
    time.sleep(sleep_s)
    return x

result = run_trials(study, objective, n_trials=n_trials, timeout=None)
sys.exit(130 if result.interrupted else 0)
"""


def _study(run_dir: Path, url: str | None = None) -> optuna.Study:
    return open_study("w", open_storage(url, run_dir), identity=make_identity(**IDENTITY))


def _quick(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def _sleepy(seconds: float):
    def objective(trial: optuna.Trial) -> float:
        time.sleep(seconds)
        return _quick(trial)

    return objective


def _start_worker(run_dir: Path, n_trials: int, sleep_s: float) -> subprocess.Popen:
    script = run_dir / "worker.py"
    script.write_text(WORKER.format(identity=IDENTITY))
    lib = str(Path(tunewise.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([lib, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(n_trials), str(sleep_s)], env=env
    )


def _wait_for(marker: Path, worker: subprocess.Popen, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not marker.exists():
        assert worker.poll() is None, f"worker exited early with {worker.returncode}"
        assert time.monotonic() < deadline, f"worker never reached {marker.name}"
        time.sleep(0.02)


def _finished_snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.params, t.value) for t in study.get_trials(states=FINISHED)}


@pytest.mark.parametrize("url", [None, "sqlite:///{run_dir}/study.db"])
def test_budget_counts_finished_trials_across_resumes(tmp_path, url):
    study = _study(tmp_path, url and url.format(run_dir=tmp_path))

    def stop_after_four(study, trial):
        if finished_trials(study) >= 4:
            study.stop()

    first = run_trials(study, _quick, n_trials=10, timeout=None, callbacks=[stop_after_four])
    assert (first.ran_this_run, first.n_finished, first.stop_reason) == (4, 4, "stopped")

    second = run_trials(study, _quick, n_trials=10, timeout=None)
    assert (second.ran_this_run, second.n_finished, second.stop_reason) == (6, 10, "budget")
    assert second.stop_details["message"] == "10 of 10 trials finished."
    assert finished_trials(study) == 10 == len(study.trials)
    assert second.best_value == max(t.value for t in study.trials)
    assert study.trials[0].user_attrs[PHASE_KEY] == "quick"

    third = run_trials(study, _quick, n_trials=10, timeout=None)
    assert (third.ran_this_run, third.stop_reason) == (0, "budget")


def test_a_stop_rules_reason_is_kept_then_cleared_on_the_next_run(tmp_path):
    study = _study(tmp_path)

    def converged(study, trial):
        if trial.number == 2:
            study.set_user_attr(STOP_REASON_KEY, "converged")
            study.set_user_attr(STOP_DETAILS_KEY, {"message": "best moved < 0.01"})
            study.stop()

    first = run_trials(study, _quick, n_trials=10, timeout=None, callbacks=[converged])
    assert first.stop_reason == "converged" and first.ran_this_run == 3
    assert first.stop_details == {"message": "best moved < 0.01"}
    second = run_trials(study, _quick, n_trials=10, timeout=None)
    assert second.stop_reason == "budget"


def test_stop_rules_see_the_clock_flushed_for_their_trial(tmp_path):
    study = _study(tmp_path)
    clock = StudyClock(study)
    seen = []

    def rule(study, trial):
        seen.append((study.user_attrs[ELAPSED_KEY], clock.elapsed_s()))

    result = run_trials(study, _sleepy(0.02), n_trials=3, timeout=None, callbacks=[rule],
                        clock=clock)
    assert len(seen) == 3
    # stored is rounded to the millisecond, so it may lead the live clock by up to 0.5 ms
    assert all(0.02 <= stored <= now + 1e-3 and now < stored + 0.5 for stored, now in seen)
    assert result.elapsed_s >= seen[-1][0]


def test_pruned_trials_count_toward_the_budget(tmp_path):
    def prune_odd(trial):
        if trial.number % 2:
            raise optuna.TrialPruned()
        return _quick(trial)

    result = run_trials(_study(tmp_path), prune_odd, n_trials=4, timeout=None)
    assert (result.n_complete, result.n_pruned, result.stop_reason) == (2, 2, "budget")


def test_timeout_is_total_across_resumes(tmp_path):
    study = _study(tmp_path)
    first = run_trials(study, _sleepy(0.05), n_trials=None, timeout=0.6)
    assert first.stop_reason == "timeout" and first.ran_this_run >= 1
    assert first.elapsed_s >= 0.6 - 1e-3
    assert study.user_attrs[ELAPSED_KEY] == first.elapsed_s

    used_up = run_trials(study, _sleepy(0.05), n_trials=None, timeout=0.6)
    assert (used_up.ran_this_run, used_up.stop_reason) == (0, "timeout")

    timeout = used_up.elapsed_s + 0.1
    third = run_trials(study, _sleepy(0.05), n_trials=None, timeout=timeout)
    assert third.stop_reason == "timeout" and third.ran_this_run >= 1
    assert third.elapsed_s >= timeout - 1e-3  # stored rounded to ms
    assert third.elapsed_s == pytest.approx(used_up.elapsed_s + third.run_wall_s, abs=0.05)
    assert third.run_wall_s < timeout - 0.1  # only what was left (~0.1 s), not all 0.7 s of it


def test_failed_trials_record_why_and_the_study_goes_on(tmp_path):
    def fail_odd(trial):
        x = _quick(trial)
        if trial.number == 1:
            raise ValueError(f"bad trial {trial.number}\nsecond line")
        return float("nan") if trial.number == 3 else x

    study = _study(tmp_path)
    result = run_trials(study, fail_odd, n_trials=4, timeout=None)
    # failed trials are replaced by new ones within the run: the budget still comes out exact
    assert (result.n_finished, result.n_failed, result.ran_this_run, result.stop_reason) == (4, 2, 6, "budget")
    trials = study.trials
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs[FAIL_REASON_KEY] == "ValueError: bad trial 1 second line"
    assert trials[3].user_attrs[FAIL_REASON_KEY] == "objective returned nan"


def test_a_run_where_every_trial_fails_is_bounded_and_resumable(tmp_path):
    def always_fails(trial):
        raise RuntimeError("broken")

    study = _study(tmp_path)
    result = run_trials(study, always_fails, n_trials=3, timeout=None)
    assert (result.ran_this_run, result.n_finished, result.stop_reason) == (max_attempts(3), 0, "attempts")
    assert "run again" in result.stop_details["message"]
    rest = run_trials(study, _quick, n_trials=3, timeout=None)
    assert (rest.ran_this_run, rest.n_finished, rest.stop_reason) == (3, 3, "budget")


def test_setup_error_stops_at_once_with_its_message(tmp_path):
    def no_gpu(trial):
        if trial.number == 1:
            raise SetupError("CUDA is not available: check the driver")
        return _quick(trial)

    study = _study(tmp_path)
    with pytest.raises(SetupError, match="CUDA is not available"):
        run_trials(study, no_gpu, n_trials=10, timeout=None)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs[FAIL_REASON_KEY].startswith("SetupError: CUDA")
    assert study.user_attrs[STOP_REASON_KEY] == "setup error"


def test_errors_outside_catch_propagate_after_the_trial_is_failed(tmp_path):
    def broken(trial):
        raise ZeroDivisionError("division by zero")

    study = _study(tmp_path)
    with pytest.raises(ZeroDivisionError):
        run_trials(study, broken, n_trials=3, timeout=None, catch=(ValueError,))
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs[FAIL_REASON_KEY] == "ZeroDivisionError: division by zero"
    assert study.user_attrs[STOP_REASON_KEY] == "error"


def test_killed_worker_is_recovered_and_no_finished_trial_is_lost(tmp_path):
    worker = _start_worker(tmp_path, n_trials=6, sleep_s=0.3)
    try:
        _wait_for(tmp_path / "started-3", worker)
    finally:
        worker.kill()
        worker.wait()

    study = _study(tmp_path)
    [stale] = study.get_trials(states=(TrialState.RUNNING,))
    assert stale.number == 3 and stale.user_attrs[WORKER_KEY]["pid"] == worker.pid
    before = _finished_snapshot(study)
    assert sorted(before) == [0, 1, 2]

    result = run_trials(study, _quick, n_trials=6, timeout=None)
    trials = study.trials
    assert trials[3].state == TrialState.FAIL
    assert trials[3].user_attrs[FAIL_REASON_KEY] == WORKER_DIED
    assert trials[4].params == trials[3].params
    assert trials[4].user_attrs[RETRY_OF_KEY] == 3
    assert (result.ran_this_run, result.n_finished, result.stop_reason) == (3, 6, "budget")
    assert finished_trials(study) == 6
    after = _finished_snapshot(study)
    assert {n: after[n] for n in before} == before


def test_ctrl_c_leaves_the_study_consistent(tmp_path):
    worker = _start_worker(tmp_path, n_trials=6, sleep_s=0.3)
    try:
        _wait_for(tmp_path / "started-2", worker)
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=20) == 130
    finally:
        worker.kill()

    study = _study(tmp_path)
    trials = study.trials
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs[FAIL_REASON_KEY] == "interrupted"
    [queued] = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs[RETRY_OF_KEY] == 2
    assert study.user_attrs[STOP_REASON_KEY] == "interrupted"
    assert study.user_attrs[ELAPSED_KEY] >= 0.6  # two whole trials, flushed on Ctrl-C
    before = _finished_snapshot(study)

    result = run_trials(study, _quick, n_trials=6, timeout=None)
    assert (result.ran_this_run, result.n_finished, result.stop_reason) == (4, 6, "budget")
    assert study.trials[3].params == trials[2].params
    after = _finished_snapshot(study)
    assert {n: after[n] for n in before} == before
