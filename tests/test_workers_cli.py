"""Several workers through the commands a user types: `tunewise run quick --workers 2` (the
notebook, headless, filled by two worker processes), `tunewise tune --workers 2` (progress
for the whole study), `tunewise worker` and `tunewise merge` followed by the post-mortem
notebook on the merged study, and bad input refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import optuna
import pytest
from optuna.trial import TrialState

from tunewise.cli import main
from tunewise.study.storage import open_storage
from tunewise.records import ORIGIN_KEY, WORKER_KEY

from test_workers import _per_gpu_study

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")

SMALL = ["--set", "epochs=1", "--set", "batch_size=64", "--set", "hflip=false", "--set", "pruner=none",
         "--set", "search_space={lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"]


def load(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(None, run_dir))


def test_run_quick_with_two_workers_fills_one_multi_objective_study(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "quick", *SMALL, "--set", "n_trials=4", "--set", "objectives=[f1, params]",
                 "--set", "sampler=random", "--workers", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[quick] [4/4 finished] 4 complete, 0 pruned, 0 failed, 0 running; best" in printed  # progress
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_finished"] == 4 and summary["stop_reason"] == "budget"
    assert [w["exit_code"] for w in summary["workers"]] == [0, 0]
    assert sum(w["trials_run"] for w in summary["workers"]) == 4
    assert summary["objectives"] == ["f1", "params"] and summary["pareto_front"]

    study = load(out, "quick")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs[WORKER_KEY]["pid"] for t in trials}) == 2, "both workers ran trials"
    assert [len(t.values) for t in trials] == [2] * 4
    # The executed notebook shows the workers and the front, not an error.
    nb = nbformat.read(out / "quick.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "2 workers filled the study together" in text and "Pareto front of quick" in text
    assert '"output_type": "error"' not in text


def test_tune_with_two_workers_prints_progress_for_the_whole_study(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["tune", *SMALL, "--set", "n_trials=3", "--set", "study_name=s", "--workers", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[3/3 finished]" in printed and "best macro-F1" in printed
    assert load(out, "s").user_attrs["tunewise.params"]["workers"] == 2

    # `tunewise worker` on the finished study: joins, finds the budget met, runs nothing.
    code = main(["worker", "--study", "s", "--storage", str(out / "study.journal"), "--set", f"run_dir={tmp_path / 'w'}"])
    assert code == 0
    assert "3 finished trials" in capsys.readouterr().out
    assert len(load(out, "s").trials) == 3


def test_merge_then_postmortem_on_the_merged_study(tmp_path, capsys):
    for gpu, seed in ((0, 0), (1, 1)):
        _per_gpu_study(tmp_path / f"gpu{gpu}.journal", n=3, seed=seed)
    merged = tmp_path / "merged"
    merged.mkdir()
    target = str(merged / "study.journal")
    args = ["merge", str(tmp_path / "gpu0.journal"), f"{tmp_path / 'gpu1.journal'}#tunewise", "--into", "all",
            "--storage", target]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "merged into all" in printed and "6 trials (6 new)" in printed
    assert main(args) == 0 and "6 trials (0 new)" in capsys.readouterr().out  # again: nothing twice
    study = load(merged, "all")
    assert len(study.trials) == 6 and all(ORIGIN_KEY in t.user_attrs for t in study.trials)

    code = main(["run", "postmortem", "--set", "studies=[all]", "--out", str(merged)])
    assert code == 0, capsys.readouterr()
    summary = json.loads((merged / "summary.json").read_text())
    [row] = summary["studies"]
    assert row["study"] == "all" and row["n_finished"] == 6 and row["stop"]["reason"] == "merged"


@pytest.mark.parametrize("args, message", [
    (["run", "quick", "--workers", "0"], "workers: 0 is not allowed"),
    (["run", "quick", "--workers", "2", "--gpus", "0", "--set", "device=cpu"], "gpus: given with device 'cpu'"),
    (["run", "quick", "--workers", "2", "--gpus", "7"], "gpus: GPU 7 does not exist"),
    (["tune", "--workers", "2", "--gpus", "a,b"], "gpus: ['a', 'b'] is not allowed"),
    (["worker", "--study", "nope"], "no storage given"),
    (["merge", "missing.journal", "--into", "m"], "storage missing.journal: no such file"),
    (["worker", "--study", "s", "--storage", "missing.journal"], "storage missing.journal: no such file"),
])
def test_bad_worker_input_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNEWISE_STORAGE", raising=False)
    code = main([*args, *(["--out", str(tmp_path / "r")] if args[0] in ("run", "tune") else [])])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "missing.journal").exists()


def test_the_live_chart_follows_the_workers(tmp_path):
    """What the quick notebook does with workers > 1: its LiveChart, given to tune as a
    callback, is redrawn from the parent process while two workers fill the study."""
    from tunewise import params as P
    from tunewise.report.charts import LiveChart
    from tunewise.phases.tuning import tune

    p = P.resolve(overrides={"run_dir": str(tmp_path), "epochs": 1, "batch_size": 64, "hflip": False, "pruner": "none",
                             "n_trials": 3, "workers": 2, "search_space": {"lr": {"type": "float", "low": 1.0e-4,
                                                                                  "high": 1.0e-2, "log": True}}})
    live = LiveChart(p["n_trials"], widget=False)
    summary = tune(p, callbacks=[live])
    assert summary["n_finished"] == 3 and len(summary["workers"]) == 2
    assert live.finished == 3 and live.progress.value == 3
    points = sum(len(trace.x or ()) for trace in live.figure().data if trace.mode == "markers")
    assert points == 3
