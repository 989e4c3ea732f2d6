"""A journal file survives what crashes and full disks do to it: a torn last record is
cut (after a backup, with a warning) and the study resumes with every finished trial; an
unreadable record in the middle stops with one message naming file and line, and
`tunewise repair` salvages every readable record into a new journal, keeping the original.
Several processes appending at once never tear or glue records."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from tunewise.cli import main
from tunewise.errors import SetupError
from tunewise.study.storage import open_storage

TORN = b'{"op_code": 5, "worker_id": "abc", "par'  # the reproduction


def _study(path, n=4, name="s"):
    study = optuna.create_study(study_name=name, storage=open_storage(str(path), path.parent), direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return study


def _finished(path, name="s"):
    study = optuna.load_study(study_name=name, storage=open_storage(str(path), path.parent))
    return len(study.get_trials(states=(TrialState.COMPLETE,)))


def test_a_torn_tail_is_cut_with_a_backup_and_the_study_resumes(tmp_path, caplog):
    journal = tmp_path / "study.journal"
    _study(journal)
    before = journal.read_bytes()
    with open(journal, "ab") as fh:
        fh.write(TORN)
    with caplog.at_level(logging.WARNING):
        storage = open_storage(str(journal), tmp_path)
    assert "last record was cut off mid-write" in caplog.text and "'set trial param' record" in caplog.text
    backups = list(tmp_path.glob("study.journal.torn-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == before + TORN
    assert journal.read_bytes() == before
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # resumes, appends cleanly
    assert _finished(journal) == 6


def test_an_append_never_glues_onto_a_tail_torn_while_the_study_is_open(tmp_path):
    journal = tmp_path / "study.journal"
    study = _study(journal, n=2)
    with open(journal, "ab") as fh:  # another worker died mid-append
        fh.write(TORN)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    lines = journal.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)
    assert _finished(journal) == 4


def test_a_broken_record_in_the_middle_names_file_and_line_and_repair_salvages(tmp_path, capsys):
    journal = tmp_path / "study.journal"
    _study(journal, n=3)
    # What tunewise without the guard left behind: a fragment, then the next append glued to it.
    lines = journal.read_bytes().splitlines(keepends=True)
    glued = TORN + lines[-1]
    broken = b"".join(lines[:-1]) + glued + b'{"op_code": 7, "tri\n' + b"".join([])
    journal.write_bytes(broken)
    with pytest.raises(SetupError) as err:
        open_storage(str(journal), tmp_path)
    message = str(err.value)
    assert f"journal {journal}, line {len(lines)}" in message and f"tunewise repair {journal}" in message
    assert main(["repair", str(journal)]) == 0
    out = capsys.readouterr().out
    assert "1 recovered from lines glued to a fragment" in out and "2 dropped" in out
    originals = list(tmp_path.glob("study.journal.broken-*"))
    assert len(originals) == 1 and originals[0].read_bytes() == broken
    assert _finished(journal) == 3  # the glued record was the last trial's completion
    assert "study s: 3 finished trials" in out


def test_processes_appending_at_once_never_tear_a_record(tmp_path):
    journal = tmp_path / "study.journal"
    optuna.create_study(study_name="s", storage=open_storage(str(journal), tmp_path))
    worker = textwrap.dedent(f"""
        import optuna
        from tunewise.study.storage import open_storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="s", storage=open_storage({str(journal)!r}, "."))
        study.optimize(lambda t: sum(t.suggest_float(f"x{{i}}", 0, 1) for i in range(20)), n_trials=15)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", worker]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert _finished(journal) == 60


def test_a_worker_killed_while_holding_the_append_lock_does_not_stall_the_others(tmp_path):
    """Optuna's symlink lock would stay behind and make everyone wait its 30 s grace period."""
    import time

    from tunewise.study.journal import journal_lock

    journal = tmp_path / "study.journal"
    journal.touch()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from tunewise.study.journal import journal_lock
        journal_lock({str(journal)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    start = time.monotonic()
    lock = journal_lock(journal)
    lock.acquire()
    lock.release()
    assert time.monotonic() - start < 1.0
