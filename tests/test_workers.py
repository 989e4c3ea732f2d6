"""Several workers on one study, on the embedded journal file: real worker processes sharing
one budget exactly, killed (SIGKILL) and interrupted (SIGINT) mid-trial, a storage that
cannot be reached, real training in two processes, and merging independent studies.

The concurrency tests use a tiny objective in real worker processes (run_trials, as every
worker runs it); one test trains real models through run_workers. The helpers here also
serve test_workers_pg.py, which runs the same checks against a real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tunewise
from tunewise import params as P
from tunewise.phases import postmortem
from tunewise.errors import ConfigError, SetupError
from tunewise.study.runner import run_trials
from tunewise.study.storage import open_storage
from tunewise.records import (
    BASELINE_KEY,
    FAIL_REASON_KEY,
    ORIGIN_KEY,
    PARAMS_KEY,
    RETRY_OF_KEY,
    STOP_REASON_KEY,
    WORKER_KEY,
)
from tunewise.study.budget import finished_trials
from tunewise.study.identity import make_identity, open_study
from tunewise.study.recovery import WORKER_DIED

from test_storage import _closed_port
from tunewise.phases.workers import join_study, run_workers
from tunewise.study.workers import (
    WorkerPlan,
    _describe,
    _stop_all,
    _watch,
    _Worker,
    plan_workers,
)
from tunewise.study.merge import merge_studies

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

IDENTITY = dict(phase="quick", space_fingerprint="s1", data_fingerprint="d1", model="m", metric="macro_f1")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
EXIT_STORAGE_LOST = 3

# One worker process: runs study "w" in the storage given (journal path or URL) with a tiny
# objective that touches started-<number>, reports three steps and records x^2 twice (as its
# value and as a user attr, to catch lost writes). TW_FAKE_HOST makes it look like a worker
# on another machine (whose death only the heartbeat can tell); TW_HEARTBEAT_S / TW_GRACE_S
# shorten the heartbeat.
WORKER = """
import os, socket, sys, time
from pathlib import Path
if os.environ.get("TW_FAKE_HOST"):
    socket.gethostname = lambda: os.environ["TW_FAKE_HOST"]
import optuna
from tunewise.study.runner import run_trials
from tunewise.study.storage import StorageLost, open_storage
from tunewise.study.identity import make_identity, open_study

url, n_trials, sleep_s, marks = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(url, marks, heartbeat_s=int(os.environ.get("TW_HEARTBEAT_S", "60")),
                       grace_s=int(os.environ.get("TW_GRACE_S", "120")))
study = open_study("w", storage, identity=make_identity(**{identity!r}))

def objective(trial):
    x = trial.suggest_float("x", -1.0, 1.0)
    (marks / f"started-{{trial.number}}").touch()
    for step in range(3):
        time.sleep(sleep_s / 3)
        trial.report(x * x * step, step)
    trial.set_user_attr("x2", x * x)
    return x * x

try:
    result = run_trials(study, objective, n_trials=n_trials, timeout=None)
except StorageLost as exc:
    print(f"tunewise: error: {{exc}}", file=sys.stderr)
    sys.exit(3)
sys.exit(130 if result.interrupted else 0)
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    lib = str(Path(tunewise.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [lib, os.environ.get("PYTHONPATH")])),
            **(extra or {})}


def start_worker(url: str, run_dir: Path, n_trials: int, sleep_s: float, *, name: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """A worker process; its output goes to <run_dir>/<name>.log (``proc.log``)."""
    script = run_dir / "worker.py"
    if not script.exists():
        script.write_text(WORKER.format(identity=IDENTITY))
    log = run_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), url, str(n_trials), str(sleep_s), str(run_dir)],
                                env=_env(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def open_test_study(url: str, run_dir: Path) -> optuna.Study:
    return open_study("w", open_storage(url, run_dir), identity=make_identity(**IDENTITY))


def wait_for(condition, procs, limit_s: float = 30.0):
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"worker exited early ({p.returncode}):\n{p.log.read_text()}"
        assert time.monotonic() < deadline, "timed out waiting for the workers"
        time.sleep(0.02)


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.params, t.value, t.user_attrs.get("x2"))
            for t in study.get_trials(states=FINISHED)}


def running_in(study: optuna.Study, proc: subprocess.Popen) -> list:
    return [t for t in study.get_trials(states=(TrialState.RUNNING,))
            if (t.user_attrs.get(WORKER_KEY) or {}).get("pid") == proc.pid]


def check_four_workers_share_the_budget(url: str, run_dir: Path) -> None:
    """4 workers x 25 trials: exactly 100 finished, unique numbers, no errors, no lost writes."""
    procs = [start_worker(url, run_dir, 100, 0.03, name=f"w{i}") for i in range(4)]
    codes = [p.wait(timeout=180) for p in procs]
    logs = [p.log.read_text() for p in procs]
    assert codes == [0, 0, 0, 0], logs
    assert not any("Traceback" in log or "rror" in log for log in logs), logs
    trials = open_test_study(url, run_dir).get_trials()
    assert [t.number for t in trials] == list(range(100))
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 100}
    for t in trials:  # every write of every trial is there
        assert t.value == t.user_attrs["x2"] == t.params["x"] * t.params["x"]  # as computed (x ** 2 may differ by an ulp)
        assert t.intermediate_values == {s: t.value * s for s in range(3)}
    by_worker = Counter(t.user_attrs[WORKER_KEY]["pid"] for t in trials)
    assert set(by_worker) == {p.pid for p in procs}, "not every worker took part"


def check_killed_worker_is_recovered(url: str, run_dir: Path, n_trials: int = 8) -> None:
    """SIGKILL one of two workers mid-trial, start another: the trial is failed and queued
    again once, nothing finished is lost, and the budget comes out exact."""
    a = start_worker(url, run_dir, n_trials, 0.6, name="a")
    b = start_worker(url, run_dir, n_trials, 0.6, name="b")
    study = open_test_study(url, run_dir)
    try:
        # Mid-trial: its parameters drawn (a worker killed before that has nothing to requeue).
        [victim] = wait_for(lambda: finished_trials(study) >= 2 and [t for t in running_in(study, a) if t.params],
                            [a, b])
        a.kill()
        a.wait()
    finally:
        a.kill()
    before = snapshot(study)
    c = start_worker(url, run_dir, n_trials, 0.6, name="c")
    assert b.wait(timeout=60) == 0, b.log.read_text()
    assert c.wait(timeout=60) == 0, c.log.read_text()

    trials = study.get_trials()
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs[FAIL_REASON_KEY] == WORKER_DIED
    [retry] = [t for t in trials if t.user_attrs.get(RETRY_OF_KEY) == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert finished_trials(study) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    after = snapshot(study)
    assert {n: after[n] for n in before} == before


def _journal(run_dir: Path) -> str:
    return str(run_dir / "study.journal")


def test_four_workers_finish_exactly_the_budget_on_a_journal(tmp_path):
    check_four_workers_share_the_budget(_journal(tmp_path), tmp_path)


def test_a_killed_worker_is_recovered_on_a_journal(tmp_path):
    check_killed_worker_is_recovered(_journal(tmp_path), tmp_path)


def test_ctrl_c_stops_every_worker_cleanly_and_a_failed_worker_is_reported(tmp_path, caplog):
    url = _journal(tmp_path)
    good = [start_worker(url, tmp_path, 50, 0.3, name=f"w{i}") for i in range(2)]
    bad_log = tmp_path / "bad.log"
    with open(bad_log, "wb") as out:
        bad = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('boom: no such GPU')"],
                               stdout=out, stderr=subprocess.STDOUT)
    bad.log = bad_log
    workers = [_Worker(WorkerPlan(i, None, 1), p, p.log, tmp_path / f"r{i}.json")
               for i, p in enumerate([*good, bad])]
    study = open_test_study(url, tmp_path)
    views = []

    def progress(study):  # the live view; the user presses Ctrl-C after a few trials
        views.append(finished_trials(study))
        if views[-1] >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _watch(workers, study, progress, poll_s=0.05)
    _stop_all(workers, grace_s=20)  # what run_workers does on Ctrl-C
    assert [p.returncode for p in good] == [130, 130], [p.log.read_text() for p in good]
    assert "worker 2 (pid %d) exited with status 1" % bad.pid in caplog.text
    assert "boom: no such GPU" in caplog.text
    assert "boom: no such GPU" in _describe(workers[2], study)["error"]
    assert _describe(workers[0], study)["error"] is None

    # Consistent: nothing left RUNNING; a trial the Ctrl-C cut short failed and is queued
    # again (one that was between trials, or telling its result, just stops).
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert all(t.user_attrs[FAIL_REASON_KEY] == "interrupted" for t in interrupted)
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[RETRY_OF_KEY] for t in queued) == sorted(t.number for t in interrupted)


def test_a_worker_that_cannot_reach_the_storage_fails_fast_with_one_clear_line(tmp_path):
    url = f"postgresql://tw:s3cret@127.0.0.1:{_closed_port()}/tunewise"
    start = time.monotonic()
    with pytest.raises(SetupError) as info:
        join_study("quick", url)
    assert time.monotonic() - start < 10
    assert "cannot open storage postgresql://tw:***@127.0.0.1" in str(info.value)

    with pytest.raises(ConfigError, match="storage /proc/tunewise/study.journal: no such file"):
        join_study("quick", "/proc/tunewise/study.journal")  # joining never creates a storage

    # As a process, what `tunewise worker --study quick --storage URL` runs.
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tunewise.phases.workers", "--study", "quick", "--storage", url],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert time.monotonic() - start < 10
    assert done.returncode == 2
    assert done.stderr.startswith("tunewise: error: cannot open storage postgresql://tw:***@127.0.0.1")
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_joining_needs_a_study_that_recorded_its_parameters(tmp_path):
    url = _journal(tmp_path)
    open_test_study(url, tmp_path)  # made without tunewise's parameters
    with pytest.raises(ConfigError, match=r"study 'nope' is not in storage .*; allowed: w$"):
        join_study("nope", url)
    with pytest.raises(ConfigError, match=r"no recorded parameters \(tunewise.params\)"):
        join_study("w", url)


def test_plan_workers_splits_cores_and_checks_input():
    p = P.resolve(overrides={"device": "cpu"})
    plans = plan_workers(p.study, 2)
    assert [(w.index, w.gpu) for w in plans] == [(0, None), (1, None)]
    assert plans[0].threads == max(1, len(os.sched_getaffinity(0)) // 2)
    with pytest.raises(ConfigError, match="workers: 0 is not allowed"):
        plan_workers(p.study, 0)
    with pytest.raises(ConfigError, match="gpus: given with device 'cpu'"):
        plan_workers(p.study, 2, [0, 1])
    with pytest.raises(ConfigError, match=r"gpus: \[0, 0\] is not allowed"):
        plan_workers(P.resolve(overrides={"device": "auto"}).study, 2, [0, 0])


SMALL_SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
}


def test_run_workers_trains_real_models_in_two_processes(tmp_path):
    p = P.resolve(overrides={
        "run_dir": str(tmp_path / "run"), "dataset": "digits", "img_size": 32, "model": "test_convnext",
        "n_trials": 6, "epochs": 1, "batch_size": 64, "hflip": False, "search_space": SMALL_SPACE,
        "pruner": "none", "device": "cpu",
    })
    views = []
    summary = run_workers(p, 2, progress=lambda study: views.append(finished_trials(study)), poll_s=0.2)

    assert summary["n_finished"] == 6 and summary["trials"]["complete"] == 6
    assert summary["stop_reason"] == "budget" and summary["interrupted"] is False
    workers = summary["workers"]
    assert [w["exit_code"] for w in workers] == [0, 0]
    assert sum(w["trials_run"] for w in workers) == 6 and all(w["trials_run"] >= 1 for w in workers)
    assert all(w["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for w in workers)
    assert views[-1] == 6  # the live view saw the study to its end
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["best_value"] == summary["best_value"] and len(on_disk["workers"]) == 2

    study = optuna.load_study(study_name="tunewise", storage=open_storage(None, tmp_path / "run"))
    assert sum(bool(t.user_attrs.get(BASELINE_KEY)) for t in study.trials) == 1  # queued once
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6  # workers seeded apart
    recorded = study.user_attrs[PARAMS_KEY]
    assert recorded["n_trials"] == 6 and "storage" not in recorded
    assert summary["best_value"] == study.best_value


# --- merging -------------------------------------------------------------------------------


def _per_gpu_study(journal: Path, *, n: int, seed: int, name: str = "tunewise", direction: str = "maximize",
                   metric: str = "macro_f1", fail: bool = False, choices=(16, 32)) -> optuna.Study:
    """What one GPU's independent run leaves: study `name` in its own journal file."""
    identity = make_identity(phase="quick", space_fingerprint="s1", data_fingerprint="d1", model="m",
                             metric=metric, direction=direction)
    study = open_study(name, open_storage(str(journal), journal.parent), direction=direction,
                       identity=identity, sampler=optuna.samplers.RandomSampler(seed=seed))
    study.enqueue_trial({"lr": 1e-3, "batch_size": choices[0]}, user_attrs={BASELINE_KEY: True})

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        batch = trial.suggest_categorical("batch_size", list(choices))
        trial.report(lr, 0)
        if fail and trial.number == 1:
            raise ValueError("diverged")
        return 0.5 + 10 * lr + batch / 1000

    run_trials(study, objective, n_trials=n, timeout=None)
    return study


def test_merge_copies_finished_trials_with_their_origin_and_is_idempotent(tmp_path):
    a = _per_gpu_study(tmp_path / "gpu0" / "study.journal", n=4, seed=0, fail=True)
    b = _per_gpu_study(tmp_path / "gpu1" / "study.journal", n=3, seed=1)
    sources = [("tunewise", str(tmp_path / "gpu0" / "study.journal")),
               ("tunewise", str(tmp_path / "gpu1" / "study.journal"))]
    target = str(tmp_path / "merged" / "study.journal")

    counts = merge_studies(sources, "merged", target)
    assert (counts["copied"], counts["duplicates"], counts["n_trials"]) == (7, 0, 7)
    assert counts["sources"][0]["not_copied"] == {"fail": 1} and counts["sources"][1]["copied"] == 3

    merged = optuna.load_study(study_name="merged", storage=open_storage(target, tmp_path))
    trials = merged.trials
    assert [t.datetime_start for t in trials] == sorted(t.datetime_start for t in trials)
    origins = {(t.user_attrs[ORIGIN_KEY]["storage"], t.user_attrs[ORIGIN_KEY]["number"]): t for t in trials}
    for source in (a, b):
        where = str((tmp_path / ("gpu0" if source is a else "gpu1") / "study.journal").resolve())
        for t in source.get_trials(states=FINISHED):
            copy = origins[(where, t.number)]
            assert (copy.params, copy.value, copy.intermediate_values) == (t.params, t.value, t.intermediate_values)
            assert (copy.datetime_start, copy.datetime_complete) == (t.datetime_start, t.datetime_complete)

    again = merge_studies([*sources, sources[0]], "merged", target)  # a source twice, and all again
    assert (again["copied"], again["duplicates"], again["n_trials"]) == (0, 11, 7)
    with_failed = merge_studies(sources, "merged", target, include_failed=True)
    assert (with_failed["copied"], with_failed["n_trials"]) == (1, 8)

    # The post-mortem reads the merged study like any other.
    best = max([*a.get_trials(states=(TrialState.COMPLETE,)), *b.get_trials(states=(TrialState.COMPLETE,))],
               key=lambda t: t.value)
    merged = optuna.load_study(study_name="merged", storage=open_storage(target, tmp_path))
    assert merged.best_value == best.value and merged.best_trial.user_attrs[ORIGIN_KEY]["number"] == best.number
    summary = postmortem.summarize_study(merged)
    assert summary["best_value"] == best.value and summary["n_finished"] == 7
    assert summary["baseline_value"] == a.trials[0].value  # the first baseline in time
    spent = a.user_attrs["tunewise.elapsed_s"] + b.user_attrs["tunewise.elapsed_s"]
    assert summary["time_h"] == pytest.approx(spent / 3600, abs=1e-6)
    assert summary["stop"]["reason"] == "merged"
    assert postmortem.phase_table([merged])[0]["trials"] == 7

    # Merging a merged study keeps each trial's first origin: nothing is copied twice.
    chained = merge_studies([("merged", target), sources[1]], "again", target)
    assert (chained["copied"], chained["duplicates"]) == (7, 3)


def test_merge_refuses_studies_that_are_not_comparable(tmp_path):
    _per_gpu_study(tmp_path / "a.journal", n=2, seed=0)
    _per_gpu_study(tmp_path / "b.journal", n=2, seed=1, name="min", direction="minimize")
    _per_gpu_study(tmp_path / "c.journal", n=2, seed=2, name="acc", metric="accuracy")
    _per_gpu_study(tmp_path / "d.journal", n=2, seed=3, name="other_choices", choices=(64, 128))
    a = ("tunewise", str(tmp_path / "a.journal"))
    target = str(tmp_path / "merged.journal")

    with pytest.raises(ConfigError, match="opposite directions"):
        merge_studies([a, ("min", str(tmp_path / "b.journal"))], "m", target, force=True)
    with pytest.raises(ConfigError, match=r"not comparable:\n  metric: .*'macro_f1'.*'accuracy'"):
        merge_studies([a, ("acc", str(tmp_path / "c.journal"))], "m", target)
    with pytest.raises(ConfigError, match="parameter 'batch_size' is"):
        merge_studies([a, ("other_choices", str(tmp_path / "d.journal"))], "m", target)
    assert optuna.get_all_study_names(open_storage(target, tmp_path)) == []  # nothing written

    forced = merge_studies([a, ("acc", str(tmp_path / "c.journal"))], "m", target, force=True)
    assert forced["copied"] == 4 and set(forced["forced"]) == {"metric"}
    merged = optuna.load_study(study_name="m", storage=open_storage(target, tmp_path))
    assert merged.user_attrs["tunewise.identity"]["metric"] == "mixed"
    assert merged.user_attrs[STOP_REASON_KEY] == "merged"
