"""Architecture as a search dimension: `model` as a categorical over timm names, with
parameters that apply to some models only, every choice checked before any trial."""

from __future__ import annotations

import optuna
import pytest

from tunewise.data import cache
from tunewise.errors import ConfigError
from tunewise.train.objective import Objective
from tunewise.study.runner import run_trials
from tunewise.data.sources import DataSpec
from tunewise.search.space import SearchSpace

MULTI = {
    "model": {"type": "categorical", "choices": ["test_convnext", "test_resnet"]},
    "drop_path": {"type": "float", "low": 0.0, "high": 0.2, "when": {"model": "test_convnext"}},
    "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
}


@pytest.fixture
def digits():
    return cache.load_images(DataSpec("digits", img_size=32))


def test_a_multi_model_study_runs_with_conditional_parameters(digits):
    space = SearchSpace.from_dict(MULTI)
    objective = Objective(digits, space, {"epochs": 1, "batch_size": 64, "hflip": False})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    study.enqueue_trial({"model": "test_convnext", "drop_path": 0.1, "lr": 3e-3})
    study.enqueue_trial({"model": "test_resnet", "lr": 3e-3})
    result = run_trials(study, objective, n_trials=2, timeout=None)
    assert result.n_complete == 2
    convnext, resnet = study.trials
    assert convnext.params["model"] == "test_convnext" and "drop_path" in convnext.params
    assert resnet.params["model"] == "test_resnet" and "drop_path" not in resnet.params


def test_every_model_choice_is_checked_up_front(digits):
    bad_name = {**MULTI, "model": {"type": "categorical", "choices": ["test_convnext", "test_resnt"]}}
    with pytest.raises(ConfigError, match=r"'test_resnt' is not a timm model \(did you mean 'test_resnet'"):
        Objective(digits, SearchSpace.from_dict(bad_name), {"epochs": 1})
    tiny = cache.load_images(DataSpec("digits", img_size=8))
    # test_resnet takes 8 px, test_convnext (a /32 network) cannot: found before any trial
    with pytest.raises(ConfigError, match=r"img_size: model 'test_convnext' cannot take 8-px images"):
        Objective(tiny, SearchSpace.from_dict({"model": {"type": "categorical", "choices": ["test_resnet", "test_convnext"]}}), {"epochs": 1})


def test_three_architectures_end_to_end_through_tune(tmp_path):
    """The issue's space: model over three timm families, drop_path only for convnext."""
    from tunewise import params as P
    from tunewise.study.storage import open_storage
    from tunewise.phases.tuning import prepare, tune

    space = {"model": {"type": "categorical", "choices": ["test_convnext", "test_resnet", "test_vit"]},
             "drop_path": {"type": "float", "low": 0.0, "high": 0.2, "when": {"model": ["test_convnext"]}}}
    p = P.resolve(overrides={"run_dir": str(tmp_path), "study_name": "arch", "n_trials": 3, "epochs": 1, "batch_size": 64,
                             "hflip": False, "pruner": "none", "baseline": False, "search_space": space})
    prep = prepare(p)
    for params in ({"model": "test_convnext", "drop_path": 0.1}, {"model": "test_resnet"}, {"model": "test_vit"}):
        prep.study.enqueue_trial(params)
    summary = tune(p, prep=prep)
    study = optuna.load_study(study_name="arch", storage=open_storage(None, tmp_path))
    assert summary["n_finished"] == 3 and summary["trials"]["complete"] == 3
    assert [t.params for t in study.trials] == [{"model": "test_convnext", "drop_path": 0.1}, {"model": "test_resnet"}, {"model": "test_vit"}]
    assert study.user_attrs["tunewise.identity"]["model"] == "search"
