"""Warm start from earlier studies in the same storage: found by dataset, clipped to the
new space, recorded; and how early the warm study reached the cold one's best."""

from __future__ import annotations

import optuna
import pytest

from tunewise import params as P
from tunewise.errors import ConfigError
from tunewise.study.storage import open_storage
from tunewise.phases.tuning import tune
from tunewise.study.warmstart import trials_to_reach

COLD_SPACE = {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True}}
WARM_SPACE = {"lr": {"type": "float", "low": 1.0e-4, "high": 5.0e-3, "log": True}}


def run(tmp_path, **extra):
    return tune(P.resolve(overrides={"run_dir": str(tmp_path), "epochs": 1, "batch_size": 64, "hflip": False,
                                     "pruner": "none", **extra}))


def test_warm_start_enqueues_the_cold_studys_best_clipped(tmp_path):
    cold = run(tmp_path, study_name="cold", n_trials=4, search_space=COLD_SPACE, baseline=False)
    warm = run(tmp_path, study_name="warm", n_trials=3, search_space=WARM_SPACE, baseline=False,
               warm_start_from=["auto"], warm_start_n=2)
    storage = open_storage(None, tmp_path)
    cold_study = optuna.load_study(study_name="cold", storage=storage)
    warm_study = optuna.load_study(study_name="warm", storage=storage)
    best_two = sorted((t for t in cold_study.trials if t.value is not None), key=lambda t: -t.value)[:2]
    clipped = {}  # clipped into the narrower space; two that clip alike are enqueued once
    for t in best_two:
        clipped.setdefault(min(t.params["lr"], 5.0e-3), t.number)
    n = len(clipped)
    assert [t.params["lr"] for t in warm_study.trials[:n]] == pytest.approx(list(clipped))
    assert [t.user_attrs["tunewise.warm_start_from"] for t in warm_study.trials[:n]] == list(clipped.values())
    lineage = warm_study.user_attrs["tunewise.lineage"]
    assert lineage["mode"] == "warm_start" and lineage["sources"][0]["from_study"] == "cold"
    assert warm["n_finished"] == 3 and cold["n_finished"] == 4
    reached = trials_to_reach(warm_study, cold_study.best_value)
    assert reached is None or 1 <= reached <= 3


def test_unknown_source_is_named(tmp_path):
    run(tmp_path, study_name="cold", n_trials=1, search_space=COLD_SPACE)
    with pytest.raises(ConfigError, match=r"warm_start_from: no study 'cld' in this storage \(did you mean 'cold'"):
        run(tmp_path, study_name="warm", n_trials=1, search_space=COLD_SPACE, warm_start_from=["cld"])


def test_trials_to_reach_counts_finished_trials():
    study = optuna.create_study(direction="maximize")
    for v in (0.5, 0.7, 0.9):
        study.add_trial(optuna.trial.create_trial(value=v))
    assert trials_to_reach(study, 0.7) == 2 and trials_to_reach(study, 0.95) is None


def test_sources_by_dataset_by_model_family_and_by_name():
    from tunewise.study.warmstart import model_family, source_studies, study_families

    assert model_family("convnext_tiny") == model_family("test_convnext") == "convnext"
    assert model_family("vit_small_patch16_224.augreg_in21k") == "vision_transformer"
    storage = optuna.storages.InMemoryStorage()

    def make(name, data, model, choices=None):
        s = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        s.set_user_attr("tunewise.identity", {"data_fingerprint": data, "model": model})
        if choices:
            s.set_user_attr("tunewise.search_space", {"model": {"type": "categorical", "choices": choices}})
        return s

    make("same-data", "A", "test_resnet")
    make("convnext-elsewhere", "B", "convnext_tiny")
    make("searched-archs", "C", "search", ["test_vit", "test_convnext"])
    make("unrelated", "D", "test_resnet")
    new = make("new", "A", "test_convnext")
    assert study_families(new) == {"convnext"}
    names = lambda sel: [s.study_name for s in source_studies(new, sel)]  # noqa: E731
    assert names(["auto"]) == ["same-data"]
    assert names(["family"]) == ["convnext-elsewhere", "searched-archs"]
    assert names(["unrelated", "auto"]) == ["unrelated", "same-data"]
