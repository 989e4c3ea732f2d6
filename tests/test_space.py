"""SearchSpace: parsing, sampling with real Optuna trials, round-trips, clip, and every
user-facing error message."""

import math

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tunewise.errors import ConfigError
from tunewise.search.space import SearchSpace

EXAMPLE = yaml.safe_load(
    """
lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
batch_size: {type: categorical, choices: [8, 16, 32, 64]}
epochs: {type: int, low: 3, high: 10, step: 1}
optimizer: {type: categorical, choices: [adamw, sgd]}
momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
weight_decay: {type: float, low: 0.0, high: 0.1, step: 0.01}
label_smoothing: 0.1
"""
)


def run_random(space, n_trials=30, seed=0):
    """Sample ``n_trials`` parameter dicts with a seeded random sampler; keep the study too."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    samples = []

    def objective(trial):
        samples.append(space.sample(trial))
        return 0.0

    study.optimize(objective, n_trials=n_trials)
    return samples, study


def error_of(raw):
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict(raw)
    return str(info.value)


def test_example_builds_every_distribution():
    space = SearchSpace.from_dict(EXAMPLE)
    assert space.distributions["lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space.distributions["epochs"] == IntDistribution(3, 10)
    assert space.distributions["batch_size"] == CategoricalDistribution([8, 16, 32, 64])
    assert space.fixed == {"label_smoothing": 0.1}
    assert space.conditions == {"momentum": {"optimizer": ["sgd"]}}


def test_sampling_respects_bounds_steps_choices_and_conditions():
    space = SearchSpace.from_dict(EXAMPLE)
    samples, study = run_random(space)
    for params in samples:
        assert space.contains(params)
        assert 1e-5 <= params["lr"] <= 1e-2
        assert params["batch_size"] in (8, 16, 32, 64)
        assert isinstance(params["epochs"], int) and 3 <= params["epochs"] <= 10
        assert math.isclose(params["weight_decay"] * 100, round(params["weight_decay"] * 100))
        assert params["label_smoothing"] == 0.1
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
    assert {p["optimizer"] for p in samples} == {"adamw", "sgd"}
    assert study.trials[0].distributions["lr"].log


def test_conditions_on_fixed_values_and_lists_of_allowed_values():
    space = SearchSpace.from_dict(
        {
            "use_mixup": True,
            "mixup_alpha": {"type": "float", "low": 0.1, "high": 0.4, "when": {"use_mixup": True}},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd", "rmsprop"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99,
                         "when": {"optimizer": ["sgd", "rmsprop"]}},
        }
    )
    samples, _ = run_random(space)
    assert all(0.1 <= p["mixup_alpha"] <= 0.4 for p in samples)
    assert all(("momentum" in p) == (p["optimizer"] != "adamw") for p in samples)


def test_conditions_sample_in_dependency_order_and_chain():
    # `dampening` is declared before the parameters it depends on.
    space = SearchSpace.from_dict(
        {
            "dampening": {"type": "float", "low": 0.0, "high": 0.5, "when": {"nesterov": False}},
            "nesterov": {"type": "categorical", "choices": [True, False],
                         "when": {"optimizer": "sgd"}},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        }
    )
    assert space.order == ("optimizer", "nesterov", "dampening")
    samples, _ = run_random(space, n_trials=40)
    for params in samples:
        assert ("nesterov" in params) == (params["optimizer"] == "sgd")
        assert ("dampening" in params) == (params.get("nesterov") is False)
    assert any("dampening" in p for p in samples)


def test_to_dict_round_trips_through_yaml():
    space = SearchSpace.from_dict(EXAMPLE)
    data = space.to_dict()
    assert SearchSpace.from_dict(data).to_dict() == data
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    # Defaults are left out, so equal spaces serialize equally.
    assert data["epochs"] == {"type": "int", "low": 3, "high": 10}
    assert data["momentum"]["when"] == {"optimizer": "sgd"}


def test_fingerprint_is_stable_and_follows_changes():
    space = SearchSpace.from_dict(EXAMPLE)
    reordered = SearchSpace.from_dict(dict(reversed(list(EXAMPLE.items()))))
    assert space.fingerprint() == reordered.fingerprint() == space.fingerprint()
    assert len(space.fingerprint()) == 12
    wider = {**EXAMPLE, "lr": {**EXAMPLE["lr"], "high": 0.1}}
    refixed = {**EXAMPLE, "label_smoothing": 0.2}
    assert SearchSpace.from_dict(wider).fingerprint() != space.fingerprint()
    assert SearchSpace.from_dict(refixed).fingerprint() != space.fingerprint()


def test_clip_makes_old_params_valid():
    space = SearchSpace.from_dict(EXAMPLE)
    old = {
        "lr": 0.5,                 # above high
        "batch_size": 128,         # not a choice: the sampler picks
        "epochs": 11.6,            # rounds and clips to the int range
        "optimizer": "sgd",
        "momentum": 0.5,           # below low
        "weight_decay": 0.034,     # snaps to the 0.01 grid
        "label_smoothing": 0.3,    # fixed here: the space's value wins
        "dropout": 0.2,            # not in this space
    }
    clipped = space.clip(old)
    assert clipped == {"lr": 0.01, "epochs": 10, "optimizer": "sgd", "momentum": 0.8,
                       "weight_decay": 0.03}
    assert space.contains({**space.fixed, **clipped, "batch_size": 32})


def test_clip_drops_inactive_conditionals_and_respects_log():
    space = SearchSpace.from_dict(EXAMPLE)
    clipped = space.clip({"optimizer": "adamw", "momentum": 0.9, "lr": -1.0})
    assert clipped == {"optimizer": "adamw", "lr": 1e-5}
    # Without its parent the condition cannot hold, so the child goes too.
    assert space.clip({"momentum": 0.9}) == {}


def test_contains_rejects_what_sample_cannot_return():
    space = SearchSpace.from_dict(EXAMPLE)
    params = space.clip({"lr": 1e-3, "batch_size": 8, "epochs": 5, "optimizer": "adamw",
                         "weight_decay": 0.0})
    good = {**space.fixed, **params}
    assert space.contains(good)
    assert not space.contains({**good, "momentum": 0.9})          # inactive for adamw
    assert not space.contains({**good, "optimizer": "sgd"})      # momentum missing
    assert not space.contains({**good, "epochs": 11})
    assert not space.contains({**good, "weight_decay": 0.005})   # off the step grid
    assert not space.contains({**good, "label_smoothing": 0.2})
    assert not space.contains({**good, "extra": 1})


def param(**spec):
    return {"p": spec}


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"lr": {"type": "float", "low": 0.1, "high": 0.01}},
            "search_space.lr: low (0.1) must be <= high (0.01)",
        ),
        (
            param(type="float", low=0.0, high=1.0, log=True),
            "search_space.p: log: true needs low > 0, got low (0.0)",
        ),
        (
            param(type="float", low=0.1, high=1.0, log=True, step=0.1),
            "search_space.p: step cannot be combined with log: true",
        ),
        (
            param(type="categorical", choices=[]),
            "search_space.p: choices must not be empty",
        ),
        (
            param(type="flaot", low=0.1, high=1.0),
            "search_space.p: unknown type 'flaot' (did you mean 'float'?); "
            "allowed types: float, int, categorical",
        ),
        (
            param(type="float", low=0.1, hgih=1.0),
            "search_space.p: unknown key 'hgih' (did you mean 'high'?); "
            "a float parameter takes: type, low, high, log, step, when",
        ),
        (
            param(type="int", high=3),
            "search_space.p: missing low (int parameters need low and high)",
        ),
        (
            param(type="float", low="small", high=1.0),
            "search_space.p: low must be a number, got 'small'",
        ),
        (
            param(type="float", low="1e-5", high=1.0),
            "low must be a number, got '1e-5' (a string: YAML needs a dot",
        ),
        (
            param(type="int", low=1, high=2.5),
            "search_space.p: high must be an integer, got 2.5",
        ),
        (
            param(type="int", low=0, high=10, step=3),
            "search_space.p: high (10) must be low (0) plus a multiple of step (3), e.g. high: 9",
        ),
        (
            param(type="categorical", choices=[[224, 224], 256]),
            "search_space.p: choice [224, 224] is a list; choices must be null, true/false, "
            "numbers or strings",
        ),
        (
            param(type="categorical"),
            "search_space.p: missing choices",
        ),
        (
            {"p": {"size": 3}},
            "search_space.p: needs a type; allowed types: float, int, categorical",
        ),
        (
            {"p": {1, 2}},
            "search_space.p: a fixed value must be null, true/false, a number, a string",
        ),
    ],
)
def test_bad_parameter_messages(raw, expected):
    assert expected in error_of(raw)


def test_when_on_a_missing_parameter_suggests_the_name():
    message = error_of(
        {
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimzer": "sgd"}},
        }
    )
    assert message == (
        "search_space.momentum: when refers to 'optimzer', which is not in the space "
        "(did you mean 'optimizer'?); parameters: optimizer"
    )


@pytest.mark.parametrize(
    "target, wanted, expected",
    [
        ({"type": "categorical", "choices": ["adamw", "sgd"]}, "sdg",
         "when optimizer: 'sdg' can never hold (did you mean 'sgd'?); "
         "optimizer is one of ['adamw', 'sgd']"),
        ("adamw", "sgd", "when optimizer: 'sgd' can never hold; optimizer is fixed at 'adamw'"),
        ({"type": "int", "low": 0, "high": 3}, 5,
         "when optimizer: 5 can never hold; optimizer is int in [0, 3]"),
        # true == 1 in Python, but not here.
        ({"type": "categorical", "choices": [0, 1]}, True,
         "when optimizer: True can never hold; optimizer is one of [0, 1]"),
    ],
)
def test_when_value_the_parameter_can_never_take(target, wanted, expected):
    message = error_of(
        {
            "optimizer": target,
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": wanted}},
        }
    )
    assert message == f"search_space.momentum: {expected}"


def test_cycle_is_reported_with_its_path():
    message = error_of(
        {
            "a": {"type": "categorical", "choices": [1, 2], "when": {"b": 1}},
            "b": {"type": "categorical", "choices": [1, 2], "when": {"a": 1}},
            "c": 3,
        }
    )
    assert message == "search_space: the when conditions form a cycle: a -> b -> a"


def test_all_problems_come_in_one_message_one_line_each():
    message = error_of(
        {
            "lr": {"type": "float", "low": 0.1, "high": 0.01},
            "batch_size": {"type": "categorical", "choices": []},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"opt": "sgd"}},
        }
    )
    lines = message.splitlines()
    assert len(lines) == 3
    assert [line.split(":")[0] for line in lines] == [
        "search_space.lr", "search_space.batch_size", "search_space.momentum"
    ]


def test_where_prefixes_messages_and_non_mappings_are_rejected():
    assert "phase1.lr: low (0.1)" in str(
        pytest.raises(ConfigError, SearchSpace.from_dict,
                      {"lr": {"type": "float", "low": 0.1, "high": 0.01}}, "phase1").value
    )
    assert "search_space: must be a mapping" in error_of(["lr"])
