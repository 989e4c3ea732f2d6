"""Several machines on a PostgreSQL server the test starts itself (conftest_pg.py): `tunewise
run` exits 3 like `tunewise worker` when the storage is lost for good; while a dead worker's
trial waits for its heartbeat to expire the progress line says so, and the trial it fails
says why."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import optuna
import pytest

from conftest_pg import pg_url, postgres  # noqa: F401  (fixtures)
from test_workers import IDENTITY, _env, running_in, start_worker, wait_for
from tunewise.errors import EXIT_STORAGE_LOST
from tunewise.records import FAIL_REASON_KEY, FINISHED_STATES
from tunewise.study.budget import finished_trials
from tunewise.study.identity import make_identity, open_study
from tunewise.study.storage import open_storage
from tunewise.study.workers import ProgressPrinter

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

TINY = ["--set", "epochs=1", "--set", "batch_size=64", "--set", "hflip=false", "--set", "pruner=none",
        "--set", "device=cpu", "--set", "search_space={lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"]


def _finished(url: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception:  # not created yet
        return 0
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def test_run_exits_3_when_the_storage_is_lost_for_good(postgres, pg_url, tmp_path):
    run = subprocess.Popen(
        [sys.executable, "-m", "tunewise", "run", "quick", *TINY, "--set", "n_trials=40", "--set", "study_name=lost",
         "--set", f"storage={pg_url}", "--out", str(tmp_path / "a")],
        env=_env({"TUNEWISE_RETRY_S": "2", "OMP_NUM_THREADS": "1"}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _finished(pg_url, "lost") < 1 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.poll() is None, run.communicate()[0]
    postgres.stop("immediate")  # lost, and not coming back
    output, _ = run.communicate(timeout=120)
    assert run.returncode == EXIT_STORAGE_LOST, output
    assert "StorageLost" in output and "lost the storage postgresql://postgres@127.0.0.1" in output


def test_the_progress_line_says_it_waits_for_a_lost_workers_heartbeat(pg_url, tmp_path):
    beat = {"TW_HEARTBEAT_S": "1", "TW_GRACE_S": "6"}  # Optuna's 60 s and 120 s, shortened
    n_trials = 4
    elsewhere = start_worker(pg_url, tmp_path, n_trials, 1.5, name="elsewhere",
                             env={**beat, "TW_FAKE_HOST": "another-machine"})
    study = open_study("w", open_storage(pg_url, tmp_path, heartbeat_s=1, grace_s=6), identity=make_identity(**IDENTITY))
    try:
        [victim] = wait_for(lambda: finished_trials(study) >= 1 and [t for t in running_in(study, elsewhere) if t.params],
                            [elsewhere])
    finally:
        elsewhere.kill()
        elsewhere.wait()
    lines = io.StringIO()
    printer = ProgressPrinter(n_trials, stream=lines)
    deadline = time.monotonic() + 5
    while "lost worker" not in lines.getvalue() and time.monotonic() < deadline:
        printer(study)
        time.sleep(0.2)
    assert "1 running (1 waiting up to " in lines.getvalue(), lines.getvalue()
    assert " s for a lost worker's heartbeat)" in lines.getvalue()

    here = start_worker(pg_url, tmp_path, n_trials, 0.3, name="here", env=beat)
    assert here.wait(timeout=60) == 0, here.log.read_text()
    trials = study.get_trials()
    reason = trials[victim.number].user_attrs[FAIL_REASON_KEY]
    assert reason.startswith("heartbeat lost: none for over 6 s from its worker (host another-machine, pid "), reason
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert FAIL_REASON_KEY not in retry.user_attrs and retry.state.name == "COMPLETE"
    printer(study)
    assert "waiting" not in lines.getvalue().splitlines()[-1]
