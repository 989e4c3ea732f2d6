"""A whole phase through the library and the command line: real training, real journal file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tunewise import params as P
from tunewise.cli import main
from tunewise.errors import ConfigError
from tunewise.phases.tuning import check, prepare, tune
from tunewise.records import BASELINE_KEY

ROOT = Path(__file__).resolve().parents[1]
SMALL_SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
}


def small(tmp_path, **extra):
    return P.resolve(overrides={
        "run_dir": str(tmp_path / "run"), "n_trials": 3, "epochs": 1, "batch_size": 64, "hflip": False,
        "search_space": SMALL_SPACE, "pruner": "none", **extra,
    })


def test_tune_runs_baseline_first_then_resumes_exactly(tmp_path):
    summary = tune(small(tmp_path))
    assert summary["n_finished"] == 3 and summary["trials"]["complete"] == 3
    assert summary["stop_reason"] == "budget"
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["best_value"] == summary["best_value"] and on_disk["best_params"] == summary["best_params"]
    study = optuna.load_study(study_name="tunewise", storage=prepare(small(tmp_path)).study._storage)
    first = study.trials[0]
    assert first.user_attrs[BASELINE_KEY] is True
    assert first.params == {"lr": 1e-3, "weight_decay": 0.05}  # tunewise's defaults
    assert summary["baseline_value"] == first.value
    assert summary["gain"] == pytest.approx(summary["best_value"] - first.value)

    again = tune(small(tmp_path, n_trials=5))
    assert again["n_finished"] == 5 and again["trials"]["complete"] == 5
    params = [tuple(sorted(t.params.items())) for t in optuna.load_study(study_name="tunewise", storage=prepare(small(tmp_path)).study._storage).trials]
    assert len(set(params)) == 5, "a resumed run replayed earlier trials"


def test_resume_with_another_space_is_refused(tmp_path):
    tune(small(tmp_path, n_trials=1))
    other = {**SMALL_SPACE, "dropout": {"type": "float", "low": 0.0, "high": 0.3}}
    with pytest.raises(ConfigError, match="space_fingerprint"):
        tune(small(tmp_path, n_trials=2, search_space=other))


def test_unknown_keys_and_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter 'n_trails' \(did you mean 'n_trials'"):
        P.resolve(overrides={"n_trails": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_trials: 0\nval_fraction: 2.0\n")
    with pytest.raises(ConfigError, match=r"n_trials: 0 is not allowed; allowed: an integer >= 1\nval_fraction"):
        P.resolve(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("n_trials: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 2"):
        P.resolve(broken)
    assert P.parse_set(["n_trials=7", "search_space={lr: 0.1}", "storage="]) == {
        "n_trials": 7, "search_space": {"lr": 0.1}, "storage": None}


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "params").glob("*.yaml")))
def test_every_preset_is_valid(preset, tmp_path):
    p = P.resolve(ROOT / "params" / preset, {"run_dir": str(tmp_path / "run")})
    checked = check(p)  # builds space, sampler, pruner, rules, data and model: no training, nothing written
    assert checked.space.distributions and not (tmp_path / "run").exists()


def test_cli_bad_input_is_one_message_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tunewise", "tune", "--set", "modle=resnet18", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("tunewise: error: --set: unknown parameter 'modle' (did you mean 'model'?)")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists(), "nothing may be written for refused input"
    proc = subprocess.run(
        [sys.executable, "-m", "tunewise", "tune", "--set", "model=test_convnxt", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2 and "did you mean 'test_convnext'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_cli_tune_prints_best_and_writes_summary(tmp_path, capsys):
    params_file = tmp_path / "p.yaml"
    params_file.write_text(
        "n_trials: 2\nepochs: 1\nbatch_size: 64\nhflip: false\npruner: none\nsearch_space:\n"
        "  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    code = main(["tune", "--params", str(params_file), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "best macro-F1 0." in out and "best parameters: {'lr':" in out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_finished"] == 2
