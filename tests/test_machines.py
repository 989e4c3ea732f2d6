"""Several machines on one study, as a team runs them (issue #20): a joiner or a resume that
runs nothing leaves the study's record byte-identical, a force says and records what it
replaces, and the owner's summary counts the trials of a worker it did not start (another
"machine": a second process on the same journal file), whose own summary and log go under
names of their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from test_workers import _env
from test_workers_cli import SMALL
from tunewise.cli import main
from tunewise.records import FORCED_KEY, IDENTITY_KEY, PARAMS_KEY, SPACE_KEY, WORKER_KEY
from tunewise.study.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)

TUNE = ["tune", *SMALL, "--set", "study_name=s", "--set", "device=cpu"]


def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=open_storage(None, run_dir))


def _record(run_dir: Path) -> str:
    """The study's user attrs exactly as the storage gives them back."""
    return json.dumps(_study(run_dir).user_attrs, sort_keys=True)


def test_a_join_and_a_noop_resume_leave_the_study_record_byte_identical(tmp_path, capsys):
    a = tmp_path / "a"
    assert main([*TUNE, "--set", "n_trials=2", "--out", str(a)]) == 0
    journal = a / "study.journal"
    record, journal_bytes = _record(a), journal.read_bytes()

    # Machine B joins with its own paths and device; the budget is spent, it runs nothing.
    assert main(["worker", "--study", "s", "--storage", str(journal), "--set", f"run_dir={tmp_path / 'b'}",
                 "--set", f"cache_dir={tmp_path / 'b-cache'}", "--set", "device=cpu"]) == 0
    # A no-op resume from elsewhere with another budget and folder (the issue's `--out gpu0`).
    assert main([*TUNE, "--set", "n_trials=1", "--set", f"storage={journal}", "--out", str(tmp_path / "gpu0")]) == 0
    # And the owner's own resume, the budget already spent, as another phase (a change a resume
    # that runs trials would record).
    assert main([*TUNE, "--set", "n_trials=2", "--set", "phase=focused", "--out", str(a)]) == 0
    assert _record(a) == record
    assert journal.read_bytes() == journal_bytes  # nothing at all was appended
    assert _study(a).user_attrs[PARAMS_KEY]["n_trials"] == 2

    # A joiner with force joins despite a difference, and says so; the record stays.
    capsys.readouterr()
    assert main(["worker", "--study", "s", "--storage", str(journal), "--set", f"run_dir={tmp_path / 'b'}",
                 "--set", "epochs=2", "--set", "force=true"]) == 0
    assert "joining with force; its record is left as it is" in capsys.readouterr().err
    assert _record(a) == record

    # The owner's force is the one named action that replaces it: said, and recorded.
    assert main([*TUNE, "--set", "n_trials=2", "--set", "epochs=2", "--set", "force=true", "--out", str(a)]) == 0
    err = capsys.readouterr().err
    assert "force=true replaces its recorded identity" in err and "epochs: 1 -> 2" in err
    attrs = _study(a).user_attrs
    [forced] = attrs[FORCED_KEY]
    assert forced["replaced"] == {"settings.epochs": [1, 2]} and forced["host"] == socket.gethostname()
    assert attrs[IDENTITY_KEY]["settings"]["epochs"] == 2


def test_the_owners_summary_counts_a_remote_workers_trials(tmp_path, capsys):
    a = tmp_path / "a"
    assert main([*TUNE, "--set", "n_trials=2", "--out", str(a)]) == 0
    owner_summary = (a / "summary.json").read_bytes()
    record = {k: v for k, v in _study(a).user_attrs.items() if k in (IDENTITY_KEY, PARAMS_KEY, SPACE_KEY)}

    # "Machine B": another process given only the study's name and storage; it shares A's run
    # folder (a shared file system) and brings 2 more trials (its own budget, kept local).
    b = subprocess.run(
        [sys.executable, "-m", "tunewise", "worker", "--study", "s", "--storage", str(a / "study.journal"),
         "--threads", "1", "--set", "n_trials=4"],
        env=_env({"OMP_NUM_THREADS": "1"}), capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stdout + b.stderr
    study = _study(a)
    b_pids = {t.user_attrs[WORKER_KEY]["pid"] for t in study.trials[2:]}
    assert len(study.trials) == 4 and len(b_pids) == 1
    [b_pid] = b_pids
    assert (a / "summary.json").read_bytes() == owner_summary  # B never writes the owner's summary
    own = a / "workers" / f"summary-quick.worker-{socket.gethostname()}-{b_pid}.json"
    assert json.loads(own.read_text())["n_finished"] == 4
    assert (a / "workers" / f"worker-{socket.gethostname()}-{b_pid}.log").exists()
    assert f"this worker's summary: {own}" in b.stdout
    assert {k: study.user_attrs[k] for k in record} == record  # its n_trials=4 stayed its own

    # A's summary, read from the storage, counts B's trials and lists B.
    assert main([*TUNE, "--set", "n_trials=4", "--out", str(a)]) == 0
    summary = json.loads((a / "summary.json").read_text())
    assert summary["n_finished"] == 4 and summary["trials"]["complete"] == 4
    workers = {w["pid"]: w["trials_run"] for w in summary["workers"]}
    assert workers == {os.getpid(): 2, b_pid: 2}
    assert all(w["host"] == socket.gethostname() for w in summary["workers"])
    from tunewise.notebook import show_result

    page = show_result(summary).data  # the notebook's table names a worker it did not start by host and pid
    assert f"{socket.gethostname()} pid {b_pid}" in page and "2 workers filled the study together" in page


def _source(journal: Path, baseline_lr: float, others: list[float]) -> None:
    """One machine's independent study: its baseline trial first, scored lr * 100."""
    from tunewise.records import BASELINE_KEY
    from tunewise.study.identity import make_identity, open_study
    from tunewise.study.runner import run_trials

    study = open_study("tunewise", open_storage(str(journal), journal.parent),
                       identity=make_identity(phase="quick", space_fingerprint="s", data_fingerprint="d",
                                              model="m", metric="macro_f1"))
    study.enqueue_trial({"lr": baseline_lr}, user_attrs={BASELINE_KEY: True})
    for lr in others:
        study.enqueue_trial({"lr": lr})
    run_trials(study, lambda t: 100 * t.suggest_float("lr", 1e-4, 1e-2), n_trials=1 + len(others), timeout=None)


def test_a_merged_study_is_measured_against_a_baseline_it_names(tmp_path, capsys):
    from tunewise.notebook import show_phase_table
    from tunewise.phases.postmortem import summarize_study
    from tunewise.records import MERGED_BASELINES_KEY, baseline_value

    _source(tmp_path / "gpu0.journal", 0.005, [0.006])  # 0.5 -> 0.6: +0.1
    _source(tmp_path / "gpu1.journal", 0.002, [0.005])  # 0.2 -> 0.5: +0.3
    sources = [str(tmp_path / "gpu0.journal"), str(tmp_path / "gpu1.journal")]
    merged = tmp_path / "merged" / "study.journal"

    assert main(["merge", *sources, "--into", "all", "--storage", str(merged)]) == 0
    assert "baseline: each source's own baseline trial (" in capsys.readouterr().out
    study = optuna.load_study(study_name="all", storage=open_storage(str(merged), merged.parent))
    assert len(study.user_attrs[MERGED_BASELINES_KEY]["sources"]) == 2
    summary = summarize_study(study)
    # The best trial (0.6) came from gpu0: measured against gpu0's baseline, and said so.
    assert summary["baseline_value"] == pytest.approx(0.5) and summary["gain"] == pytest.approx(0.1)
    assert "gpu0.journal (the best trial's source)" in summary["baseline"]
    gains = {Path(r["source"].split("@", 1)[1]).name: r["gain"] for r in summary["source_gains"]}
    assert gains == {"gpu0.journal": pytest.approx(0.1), "gpu1.journal": pytest.approx(0.3)}
    page = show_phase_table([study]).data
    assert "each source against its own baseline" in page and "+0.3000" in page

    assert main(["merge", *sources, "--into", "named", "--storage", str(merged), "--baseline", sources[1]]) == 0
    assert "gpu1.journal's baseline trial" in capsys.readouterr().out
    named = optuna.load_study(study_name="named", storage=open_storage(str(merged), merged.parent))
    assert baseline_value(named) == pytest.approx(0.2)
    assert "(chosen at merge)" in summarize_study(named)["baseline"]
    assert main(["merge", *sources, "--into", "x", "--storage", str(merged), "--baseline", "gpu7"]) == 2
    assert "--baseline 'gpu7' names no single source" in capsys.readouterr().err
