"""A full disk, simulated with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored so a write
past it fails with EFBIG the way a full disk fails with ENOSPC), in a subprocess: the
journal append fails with one clear message and leaves no fragment, the study reads back
and resumes once space is there; reports, summaries and params files are written whole or
not at all; the disk cache is skipped with a warning and the run goes on from memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import optuna
from optuna.trial import TrialState

from tunewise.study.storage import open_storage

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
def limit(n):
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.RLIM_INFINITY))
"""


def run_limited(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_a_full_disk_stops_the_study_cleanly_and_it_resumes(tmp_path):
    journal = tmp_path / "study.journal"
    proc = run_limited(f"""
        import os, optuna
        from tunewise.errors import SetupError
        from tunewise.study.storage import open_storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name="s", storage=open_storage({str(journal)!r}, "."), direction="maximize")
        limit(os.path.getsize({str(journal)!r}) + 5000)  # room for a few trials
        try:
            study.optimize(lambda t: sum(t.suggest_float(f"x{{i}}", 0, 1) for i in range(5)), n_trials=200)
        except SetupError as exc:
            print("STOPPED", exc)
    """)
    assert proc.stdout.startswith("STOPPED journal "), proc.stdout + proc.stderr
    assert "the disk is full" in proc.stdout and "run the same command again to resume" in proc.stdout
    data = journal.read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())  # no fragment
    assert not list(tmp_path.glob("*.torn-*"))  # nothing to cut: the failed append took itself back
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal), tmp_path))
    done = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert 0 < done < 200
    study.optimize(lambda t: sum(t.suggest_float(f"x{i}", 0, 1) for i in range(5)), n_trials=3)  # space again
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == done + 3


def test_reports_and_params_files_are_whole_or_absent(tmp_path):
    report = tmp_path / "quick.html"
    report.write_text("the previous report")
    proc = run_limited(f"""
        from pathlib import Path
        from tunewise import params as P
        from tunewise.atomic import write_text_atomic
        from tunewise.errors import SetupError
        from tunewise.phases.validate import write_params_file
        limit(300)
        for write in (lambda: write_text_atomic({str(report)!r}, "x" * 100_000),
                      lambda: write_params_file({str(tmp_path / 'final.yaml')!r}, P.resolve(), {{}}, "note")):
            try:
                write()
            except SetupError as exc:
                print("STOPPED", exc)
    """)
    stopped = [line for line in proc.stdout.splitlines() if line.startswith("STOPPED")]
    assert len(stopped) == 2, proc.stdout + proc.stderr
    assert all("the disk is full" in line for line in stopped) and "quick.html" in stopped[0]
    assert report.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick.html"]  # no temporary, no half file


def test_a_full_cache_disk_is_a_warning_and_the_data_loads_from_memory(tmp_path):
    cache = tmp_path / "cache"
    proc = run_limited(f"""
        import logging
        logging.basicConfig(level=logging.WARNING)
        from tunewise.data.cache import load_images
        from tunewise.data.sources import DataSpec
        limit(20_000)
        data = load_images(DataSpec(dataset="digits", img_size=32), {str(cache)!r})
        print("LOADED", len(data))
    """)
    assert "LOADED 1797" in proc.stdout, proc.stdout + proc.stderr
    assert "disk cache not written" in proc.stderr and "the disk is full" in proc.stderr
    # no entry and no temporary folder (index/ holds the fingerprint's small manifests, written whole)
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name != "index"]
