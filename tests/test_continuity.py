"""Phases that build on each other, run the way the README runs them: `tunewise run quick`
on the user's own PNG folder, then `tunewise run focused` and `tunewise run validate` into the
same run folder. The later phases use the quick study's data and settings; a contradicting
--set, a resume for another setup and a changed set of categorical choices are refused with
nothing written; a run whose study failed exits non-zero and keeps the last good report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from pngdata import write_png_folder
from tunewise import params as P
from tunewise.cli import main
from tunewise.errors import ConfigError
from tunewise.execute import phase_params
from tunewise.study.identity import HISTORY_KEY, IDENTITY_KEY, PARAMS_KEY, make_identity, open_study
from tunewise.study.storage import open_storage

SPACE = "search_space={lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}, batch_size: {type: categorical, choices: [8, 16]}}"
QUICK = ["--set", "dataset=animals", "--set", "img_size=32", "--set", "epochs=1", "--set", "n_trials=3",
         "--set", "pruner=none", "--set", "cache_dir=cache", "--set", SPACE]


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    """quick, focused and validate into runs/mine, typed with relative paths from the folder
    that holds the data (as a user would); the summaries as each phase left them."""
    home = tmp_path_factory.mktemp("continuity")
    write_png_folder(home / "animals", n_per_class=20)
    before = os.getcwd()
    os.chdir(home)
    summaries = {}
    try:
        for phase, args in [("quick", QUICK),
                            ("focused", ["--set", "always_run=true", "--set", "n_trials=2", "--set", "warm_start_n=1"]),
                            ("validate", ["--set", "seeds=[42, 777]"])]:
            assert main(["run", phase, *args, "--out", "runs/mine"]) == 0, phase
            summaries[phase] = json.loads((home / "runs" / "mine" / "summary.json").read_text())
    finally:
        os.chdir(before)
    return home, summaries


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256 of its bytes)."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture
def run_copy(mine, tmp_path):
    """A copy of the run folder to change (or not) in one test."""
    home, _ = mine
    out = tmp_path / "mine"
    shutil.copytree(home / "runs" / "mine", out)
    return out


def _study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(out / "study.journal"), out, must_exist=True))


def test_later_phases_train_on_the_users_data_with_its_settings(mine):
    home, s = mine
    animals = str(home / "animals")
    assert s["quick"]["dataset"] == animals and "animals (60 images, 3 classes" in s["quick"]["data"]["description"]
    assert s["focused"]["dataset"] == animals  # not digits (params/focused.yaml no longer says so)
    assert s["focused"]["data"]["fingerprint"] == s["quick"]["data"]["fingerprint"]
    assert s["focused"]["baseline_value"] == s["quick"]["baseline_value"]
    assert s["validate"]["dataset"] == animals and s["validate"]["source_study"] == "focused"
    out = home / "runs" / "mine"
    focused = _study(out, "focused").user_attrs[PARAMS_KEY]
    assert focused["dataset"] == animals and focused["epochs"] == 1  # the quick study's, not the preset's 5
    assert _study(out, "focused").user_attrs[IDENTITY_KEY]["settings"]["epochs"] == 1


def test_paths_are_recorded_absolute_and_final_params_work_from_any_folder(mine, tmp_path, monkeypatch):
    home, s = mine
    recorded = _study(home / "runs" / "mine", "quick").user_attrs[PARAMS_KEY]
    assert recorded["dataset"] == str(home / "animals")
    assert recorded["run_dir"] == str(home / "runs" / "mine") and recorded["cache_dir"] == str(home / "cache")
    monkeypatch.chdir(tmp_path)  # another folder: the file still names the data
    final = P.resolve(s["validate"]["params_file"])
    assert final["dataset"] == str(home / "animals") and final["run_dir"] == str(home / "runs" / "mine")
    assert final["epochs"] == 1 and final["search_space"] == {}
    assert yaml.safe_load(Path(s["validate"]["params_file"]).read_text())["dataset"] == str(home / "animals")


def test_a_worker_joins_from_another_folder(run_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["worker", "--study", "quick", "--storage", str(run_copy / "study.journal"), "--set", f"run_dir={run_copy}"])
    assert code == 0, capsys.readouterr().err
    assert "study quick (quick): 3 finished trials" in capsys.readouterr().out


def test_a_contradicting_set_is_refused_naming_both_values_and_writes_nothing(mine, run_copy, capsys):
    home, _ = mine
    before = snapshot(run_copy)
    assert main(["run", "focused", "--set", "dataset=digits", "--set", "always_run=true", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert f"dataset: 'digits' here, '{home / 'animals'}' in study 'quick'" in err
    assert "--set new_study=true" in err
    assert main(["run", "validate", "--set", "img_size=48", "--out", str(run_copy)]) == 2
    assert "img_size: 48 here, 32 in study 'focused'" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_epochs_may_be_raised_for_validation_and_new_study_allows_other_data(mine, run_copy):
    home, _ = mine
    p = phase_params("validate", None, {"run_dir": str(run_copy), "epochs": 3})
    assert p["epochs"] == 3 and p["dataset"] == str(home / "animals")
    p = phase_params("focused", None, {"run_dir": str(run_copy), "dataset": "digits", "new_study": True})
    assert p["dataset"] == "digits" and p["img_size"] == 32


def test_params_file_layers_on_the_phase_preset(tmp_path):
    mine = tmp_path / "my.yaml"
    mine.write_text("search_space:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    p = phase_params("quick", mine, {"run_dir": str(tmp_path / "q1")})
    assert p["study_name"] == "quick" and p["timeout"] == 2400  # the preset's, kept
    assert p["search_space"] == {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}}
    assert p["stop_rules"]["plateau"] == {"min_delta": 0.01, "window": 10}
    assert phase_params("quick", mine, {"run_dir": str(tmp_path), "timeout": 60})["timeout"] == 60  # then --set


def test_a_resume_for_another_setup_is_refused_by_name_and_value_and_writes_nothing(mine, run_copy, capsys, monkeypatch):
    home, _ = mine
    before = snapshot(run_copy)
    monkeypatch.chdir(home)
    assert main(["run", "quick", *QUICK, "--set", "epochs=2", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "epochs: 1 -> 2" in err and "--set force=true" in err and "fingerprint" not in err
    tune = ["tune", *QUICK, "--set", "study_name=quick", "--out", str(run_copy)]
    assert main([*tune, "--set", "hflip=false", "--set", "val_fraction=0.3"]) == 2
    err = capsys.readouterr().err
    assert "hflip: True -> False" in err and "val_fraction: 0.2 -> 0.3" in err
    assert snapshot(run_copy) == before


def test_changed_categorical_choices_are_refused_even_with_force(mine, run_copy, capsys, monkeypatch):
    home, _ = mine
    before = snapshot(run_copy)
    other = SPACE.replace("choices: [8, 16]", "choices: [16, 32]")
    args = [a if a != SPACE else other for a in QUICK]
    monkeypatch.chdir(home)
    assert main(["run", "quick", *args, "--set", "force=true", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "batch_size: choices [8, 16] -> choices [16, 32]" in err and "even with force" in err
    assert "--set 'warm_start_from=[quick]'" in err
    assert main(["tune", *args, "--set", "study_name=quick", "--set", "force=true", "--out", str(run_copy)]) == 2
    assert snapshot(run_copy) == before


def test_a_study_stopped_by_its_failure_guard_exits_1_and_keeps_the_good_report(mine, run_copy, capsys, monkeypatch):
    home, _ = mine
    kept = {k: v for k, v in snapshot(run_copy).items() if k in ("quick.ipynb", "quick.html", "summary.json")}
    assert len(kept) == 3
    # An optimizer timm lists but cannot build here (it needs NVIDIA apex): every trial fails.
    broken = [*QUICK, "--set", "optimizer=fusedadamw", "--set", "force=true", "--set", "n_trials=6"]
    monkeypatch.chdir(home)
    assert main(["run", "quick", *broken, "--out", str(run_copy)]) == 1
    err = capsys.readouterr().err
    assert "quick failed: study quick stopped on failure_guard" in err
    after = snapshot(run_copy)
    assert {k: after[k] for k in kept} == kept  # the good report and summary, untouched
    assert "quick.failed.ipynb" in after and "quick.failed.html" in after
    failed = json.loads((run_copy / "summary-quick.failed.json").read_text())
    assert failed["stop_reason"] == "failure_guard"
    assert main(["tune", *broken, "--set", "study_name=quick", "--out", str(run_copy)]) == 1


def test_focused_resume_mode_keeps_the_categorical_choices(run_copy):
    """focus_mode: resume continues the quick study in the narrowed space; narrowing drops
    categorical choices no top trial used, which one study cannot do: its choices stay."""
    before = len(_study(run_copy, "quick").trials)
    assert main(["run", "focused", "--set", "focus_mode=resume", "--set", "always_run=true", "--set", "n_trials=1",
                 "--out", str(run_copy)]) == 0
    resumed = _study(run_copy, "quick")
    assert len(resumed.trials) == before + 1 and resumed.trials[-1].state.name == "COMPLETE"
    assert resumed.user_attrs["tunewise.search_space"]["batch_size"]["choices"] == [8, 16]


def _identity(**extra):
    return make_identity(phase="quick", space_fingerprint="s", data_fingerprint="d", model="m", metric="macro_f1", **extra)


def test_an_older_study_without_the_new_fields_resumes_and_records_them(tmp_path):
    storage = open_storage(None, tmp_path)
    open_study("s", storage, identity=_identity())
    study = open_study("s", storage, identity=_identity(settings={"epochs": 3}, search_space={"lr": 0.1},
                                                       location={"dataset": "/data"}))
    assert study.user_attrs[IDENTITY_KEY]["settings"] == {"epochs": 3}
    [entry] = study.user_attrs[HISTORY_KEY]
    assert entry["forced"] is False
    # from now on the settings are guarded; where the data lies is not
    moved = open_study("s", storage, identity=_identity(settings={"epochs": 3}, search_space={"lr": 0.1},
                                                        location={"dataset": "/elsewhere"}))
    assert moved.user_attrs[IDENTITY_KEY]["location"] == {"dataset": "/elsewhere"}
    with pytest.raises(ConfigError, match=r"epochs: 3 -> 4"):
        open_study("s", storage, identity=_identity(settings={"epochs": 4}, search_space={"lr": 0.1}))


def test_a_refused_open_study_leaves_the_journal_byte_identical(tmp_path):
    storage = open_storage(None, tmp_path)
    study = open_study("s", storage, identity=_identity(settings={"hflip": True}))
    study.optimize(lambda t: t.suggest_categorical("batch_size", [8, 16]), n_trials=2)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"hflip: True -> False"):
        open_study("s", open_storage(None, tmp_path), identity=_identity(settings={"hflip": False}))
    with pytest.raises(ConfigError, match=r"batch_size: choices \[8, 16\] -> choices \[16, 32\]"):
        open_study("s", open_storage(None, tmp_path), identity=_identity(settings={"hflip": True}), force=True,
                   distributions={"batch_size": optuna.distributions.CategoricalDistribution([16, 32])})
    assert snapshot(tmp_path) == before
