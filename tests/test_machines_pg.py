"""Several machines on a PostgreSQL server the test starts itself (conftest_pg.py): `tunewise
run` exits 3 like `tunewise worker` when the storage is lost for good; while a dead worker's
trial waits for its heartbeat to expire the progress line says so, and the trial it fails
says why."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

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
    except KeyError:  # not created yet
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
    beat = {"TW_HEARTBEAT_S": "1", "TW_GRACE_S": "10"}  # Optuna's 60 s and 120 s, shortened
    n_trials = 2  # one finished, one running in the dead worker: the next worker must wait for it
    elsewhere = start_worker(pg_url, tmp_path, n_trials, 1.5, name="elsewhere",
                             env={**beat, "TW_FAKE_HOST": "another-machine"})
    study = open_study("w", open_storage(pg_url, tmp_path, heartbeat_s=1, grace_s=10), identity=make_identity(**IDENTITY))
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
    assert "waiting up to " in here.log.read_text() and f"heartbeat (trial {victim.number})" in here.log.read_text()
    trials = study.get_trials()
    reason = trials[victim.number].user_attrs[FAIL_REASON_KEY]
    assert reason.startswith("heartbeat lost: none for over 10 s from its worker (host another-machine, pid "), reason
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert FAIL_REASON_KEY not in retry.user_attrs and retry.state.name == "COMPLETE"
    printer(study)
    assert "waiting" not in lines.getvalue().splitlines()[-1]


README = Path(__file__).resolve().parents[1] / "README.md"
# Added to each `run quick` / `tune` line of the README block: a tiny study on the CPU.
README_TINY = ("--set n_trials=2 --set epochs=1 --set batch_size=64 --set device=cpu --set pruner=none "
               "--set 'search_space={lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}'")


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block under ``heading``, comments left out."""
    text = README.read_text()
    section = text[text.index(heading):]
    start = section.index("```sh\n") + len("```sh\n")
    block = section[start:section.index("```", start)]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readmes_several_machines_block_runs_as_written(postgres, pg_url, tmp_path, monkeypatch, capsys):
    """Each line in order, through the CLI's main (in this process: no interpreter start-up
    per line; the notebooks and workers are processes as ever), `export` into the environment."""
    from tunewise.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params").symlink_to(README.parent / "params")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PGPASSWORD", "unused")  # trust authentication: any password will do
    monkeypatch.delenv("TUNEWISE_STORAGE", raising=False)
    ran, skipped = [], []
    for line in readme_block("## Several workers, several machines"):
        if "--gpus" in line:  # needs GPUs this machine lacks
            skipped.append(line)
            continue
        line = re.sub(r"cuda:\d", "cpu", line)
        if line.startswith("export TUNEWISE_STORAGE="):
            # The same shape (a ${PGPASSWORD} reference, read by tunewise), at the test's server.
            assert "${PGPASSWORD}" in line
            monkeypatch.setenv("TUNEWISE_STORAGE", pg_url.replace("postgres@", "postgres:${PGPASSWORD}@"))
            ran.append(line)
            continue
        if re.match(r"tunewise (run quick|tune) ", line):
            line += " " + README_TINY
        args = shlex.split(line)
        assert args[0] == "tunewise"
        code = main(args[1:])
        assert code == 0, f"{line}: exit {code}\n{capsys.readouterr()}"
        ran.append(line)
    assert len(skipped) == 1 and len(ran) == 8
    output = capsys.readouterr().out

    runs = tmp_path / "runs"
    for gpu in ("gpu0", "gpu1"):  # journal files, as the block means: not the PostgreSQL study
        journal = runs / gpu / "study.journal"
        assert len(optuna.load_study(study_name="quick", storage=open_storage(str(journal), ".")).trials) == 2
    merged = optuna.load_study(study_name="all", storage=open_storage(str(runs / "merged" / "study.journal"), "."))
    assert len(merged.trials) == 4
    post = json.loads((runs / "merged" / "summary.json").read_text())
    assert post["phase"] == "postmortem" and post["studies"][0]["n_finished"] == 4
    assert "the best trial's source" in post["studies"][0]["baseline"]
    shared = optuna.load_study(study_name="quick", storage=pg_url)
    assert len(shared.get_trials(states=FINISHED_STATES)) == 2
    assert json.loads((runs / "a" / "summary.json").read_text())["n_finished"] == 2
    assert "this worker's summary:" in output  # B joined the spent study, wrote its own summary
