"""Narrowing a space to its best trials (exact bounds by hand) and warm-starting a real study."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from tunewise.errors import ConfigError
from tunewise.records import LINEAGE_KEY, WARM_START_KEY
from tunewise.search.narrow import best_complete, narrow_space, warm_start
from tunewise.search.space import SearchSpace

SPACE = SearchSpace.from_dict({
    "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.05},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "width": {"type": "int", "low": 8, "high": 64, "step": 8},
    "epochs": {"type": "int", "low": 1, "high": 20},
    "label_smoothing": 0.1,
})
# Best first. The bottom rows sit far out, so a bound that leaked them would show.
ROWS = [
    (0.95, dict(lr=1e-4, weight_decay=0.02, dropout=0.10, batch_size=16, width=16, epochs=5)),
    (0.94, dict(lr=1e-3, weight_decay=0.06, dropout=0.20, batch_size=32, width=32, epochs=9)),
    (0.93, dict(lr=3e-4, weight_decay=0.04, dropout=0.15, batch_size=16, width=24, epochs=7)),
    (0.50, dict(lr=1e-2, weight_decay=0.10, dropout=0.30, batch_size=8, width=64, epochs=20)),
    (0.40, dict(lr=1e-5, weight_decay=0.00, dropout=0.00, batch_size=8, width=8, epochs=1)),
]


def trials_of(space, rows, extra_states=()):
    """Real frozen trials, numbered by a study, in the order given (best not first)."""
    study = optuna.create_study(direction="maximize")
    for value, params in reversed(rows):
        dists = {k: space.distributions[k] for k in params}
        study.add_trial(create_trial(params=params, distributions=dists, value=value))
    for state in extra_states:
        study.add_trial(create_trial(state=state, params={}, distributions={}))
    return study.trials


def bounds(narrowed, name):
    dist = narrowed.space.distributions[name]
    return dist.low, dist.high


def test_linear_float_is_the_top_range_widened_by_margin():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, top_k=3)
    # top 0.02 .. 0.06, width 0.04, 10% on each side
    assert bounds(narrowed, "weight_decay") == pytest.approx((0.016, 0.064))


def test_log_float_is_widened_in_log_space():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, top_k=3)
    # top 1e-4 .. 1e-3 spans one decade; 10% of it is 10**0.1 on each side
    assert bounds(narrowed, "lr") == pytest.approx((1e-4 * 10**-0.1, 1e-3 * 10**0.1))
    assert narrowed.space.distributions["lr"].log


def test_int_and_float_steps_snap_outward_to_the_original_grid():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, top_k=3)
    # width: top 16 .. 32 -> 14.4 .. 33.6 -> grid 8 + k*8
    assert bounds(narrowed, "width") == (8, 40)
    assert narrowed.space.distributions["width"].step == 8
    assert isinstance(narrowed.space.distributions["width"].low, int)
    # epochs: top 5 .. 9 -> 4.6 .. 9.4 -> integers
    assert bounds(narrowed, "epochs") == (4, 10)
    # dropout: top 0.10 .. 0.20 -> 0.09 .. 0.21 -> grid of 0.05, exact decimals
    assert bounds(narrowed, "dropout") == (0.05, 0.25)


def test_categorical_keeps_only_choices_seen_in_the_top_trials():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, top_k=3)
    assert narrowed.space.distributions["batch_size"].choices == (16, 32)
    row = next(r for r in narrowed.table if r["param"] == "batch_size")
    assert row == {"param": "batch_size", "old": "[8, 16, 32]", "new": "[16, 32]",
                   "note": "from 3 top trials; dropped [8]"}


def test_top_values_at_the_edges_never_leave_the_original_bounds():
    edge_rows = [(0.9, dict(lr=1e-5, weight_decay=0.0)), (0.8, dict(lr=1e-2, weight_decay=0.1)),
                 (0.7, dict(lr=1e-3, weight_decay=0.05))]
    space = SearchSpace.from_dict({k: SPACE.to_dict()[k] for k in ("lr", "weight_decay")})
    narrowed = narrow_space(trials_of(space, edge_rows), space, top_k=3, margin=0.5)
    assert bounds(narrowed, "lr") == (1e-5, 1e-2)
    assert bounds(narrowed, "weight_decay") == (0.0, 0.1)


def test_equal_top_values_widen_by_margin_of_the_original_width():
    rows = [(0.9 - i / 100, dict(lr=1e-3, weight_decay=0.05, dropout=0.0, width=64)) for i in range(3)]
    space = SearchSpace.from_dict({k: SPACE.to_dict()[k] for k in ("lr", "weight_decay", "dropout", "width")})
    narrowed = narrow_space(trials_of(space, rows), space)
    assert bounds(narrowed, "weight_decay") == pytest.approx((0.04, 0.06))  # 10% of 0.1 each side
    assert bounds(narrowed, "lr") == pytest.approx((1e-3 * 1000**-0.1, 1e-3 * 1000**0.1))  # 3 decades
    assert bounds(narrowed, "dropout") == (0.0, 0.05)  # 0 .. 0.03, clipped at 0, snapped up
    assert bounds(narrowed, "width") == (56, 64)  # 58.4 .. 69.6 -> clipped, snapped down
    note = next(r["note"] for r in narrowed.table if r["param"] == "weight_decay")
    assert note == "from 3 top trials, all 0.05: widened by margin of the original range"


def test_fixed_params_stay_fixed_and_table_reads_well():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, top_k=3)
    assert narrowed.space.fixed == {"label_smoothing": 0.1}
    table = {r["param"]: r for r in narrowed.table}
    assert list(table) == list(SPACE.order)
    assert table["label_smoothing"] == {"param": "label_smoothing", "old": "0.1", "new": "0.1", "note": "fixed"}
    assert table["lr"]["old"] == "1e-05 .. 0.01 (log)"
    assert table["lr"]["new"] == "7.94328e-05 .. 0.00125893 (log)"
    assert table["width"]["old"] == "8 .. 64 step 8" and table["epochs"]["new"] == "4 .. 10"
    assert table["lr"]["note"] == "from 3 top trials"


def test_top_share_with_min_top_and_top_k_pick_the_best_trials():
    trials = trials_of(SPACE, ROWS)
    best_numbers = [t.number for t in best_complete(trials)]
    assert narrow_space(trials, SPACE, top_share=0.2).top_numbers == best_numbers[:3]  # 1, raised to 3
    assert narrow_space(trials, SPACE, top_share=0.8).top_numbers == best_numbers[:4]
    assert narrow_space(trials, SPACE, top_k=4, top_share=0.2).top_numbers == best_numbers[:4]
    assert narrow_space(trials, SPACE, top_k=0, top_share=0.8).top_numbers == best_numbers[:4]


def test_minimize_takes_the_lowest_values():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, direction="minimize", min_top=2, top_k=2)
    assert narrowed.space.distributions["batch_size"].choices == (8,)
    assert bounds(narrowed, "weight_decay") == pytest.approx((0.0, 0.1))


def test_the_narrowed_space_round_trips_and_serializes():
    narrowed = narrow_space(trials_of(SPACE, ROWS), SPACE, top_k=3)
    assert SearchSpace.from_dict(narrowed.space.to_dict()) == narrowed.space
    data = json.loads(json.dumps(narrowed.to_dict()))
    assert data["top_numbers"] == narrowed.top_numbers and len(data["table"]) == len(SPACE.order)
    for t in trials_of(SPACE, ROWS[:3]):  # the top trials themselves are inside the new space
        assert narrowed.space.contains({**t.params, "label_smoothing": 0.1})


COND_SPACE = SearchSpace.from_dict({
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd", "rmsprop"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": ["sgd", "rmsprop"]}},
    "nesterov": {"type": "categorical", "choices": [True, False], "when": {"momentum": 0.9}},
    "epochs": {"type": "int", "low": 1, "high": 10},
    "warmup": {"type": "float", "low": 0.0, "high": 2.0, "when": {"epochs": 8}},
})


def test_conditional_params_count_only_trials_where_they_were_active():
    rows = [(0.9, dict(optimizer="sgd", momentum=0.9, nesterov=True, epochs=3)),
            (0.8, dict(optimizer="adamw", epochs=5)),
            (0.7, dict(optimizer="sgd", momentum=0.95, epochs=7)),
            (0.1, dict(optimizer="rmsprop", momentum=0.8, epochs=1))]
    narrowed = narrow_space(trials_of(COND_SPACE, rows), COND_SPACE, top_k=3)
    assert bounds(narrowed, "momentum") == pytest.approx((0.895, 0.955))  # 2 sgd trials only
    # rmsprop is gone, so the condition keeps the value that can still hold
    assert narrowed.space.conditions["momentum"] == {"optimizer": ["sgd"]}
    table = {r["param"]: r for r in narrowed.table}
    assert table["momentum"]["note"] == "from 2 top trials"
    assert narrowed.space.distributions["nesterov"].choices == (True,)
    # epochs 3 .. 7 -> 2 .. 8: epochs 8 can still happen, but no top trial had warmup active
    assert bounds(narrowed, "epochs") == (2, 8)
    assert narrowed.space.distributions["warmup"] == COND_SPACE.distributions["warmup"]
    assert table["warmup"]["note"] == "unchanged: never active in top trials"


def test_a_condition_that_can_no_longer_hold_drops_the_param_and_its_dependents():
    rows = [(0.9, dict(optimizer="adamw", epochs=3)), (0.8, dict(optimizer="adamw", epochs=4)),
            (0.7, dict(optimizer="adamw", epochs=5)), (0.1, dict(optimizer="sgd", momentum=0.9, epochs=1))]
    narrowed = narrow_space(trials_of(COND_SPACE, rows), COND_SPACE, top_k=3)
    assert narrowed.space.distributions["optimizer"].choices == ("adamw",)
    assert "momentum" not in narrowed.space.order and "nesterov" not in narrowed.space.order
    table = {r["param"]: r for r in narrowed.table}
    assert table["momentum"]["new"] == "-"
    assert table["momentum"]["note"] == "dropped: its condition (optimizer: [sgd, rmsprop]) can no longer hold"
    assert table["nesterov"]["note"] == "dropped: its condition (momentum: [0.9]) can no longer hold"
    # epochs 3 .. 5 -> 2.8 .. 5.2 -> 2 .. 6: warmup (when epochs 8) goes as well
    assert "warmup" not in narrowed.space.order


def test_too_few_complete_trials_say_how_many_there_are():
    trials = trials_of(SPACE, ROWS[:2], extra_states=(TrialState.PRUNED, TrialState.FAIL))
    with pytest.raises(ConfigError) as err:
        narrow_space(trials, SPACE)
    assert str(err.value) == (
        "trials: narrowing the search space needs at least 3 complete trials from the quick phase, "
        "it has 2; allowed: run more quick trials, or lower min_top"
    )


@pytest.mark.parametrize("options, field", [
    ({"top_share": 0}, "top_share"), ({"top_k": -1}, "top_k"), ({"margin": -0.1}, "margin"),
    ({"min_top": 0}, "min_top"), ({"direction": "max"}, "direction"),
])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        narrow_space(trials_of(SPACE, ROWS), SPACE, **options)


def journal_study(path, name):
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def test_warm_start_enqueues_clipped_params_that_the_next_trials_run(tmp_path):
    source = trials_of(SPACE, ROWS)
    narrowed = narrow_space(source, SPACE, top_k=3)
    focused = journal_study(tmp_path / "study.journal", "focused")
    enqueued = warm_start(focused, source, narrowed.space, n=4, source_name="quick")

    assert len(enqueued) == 4
    assert enqueued[0] == ROWS[0][1]  # the best trial is inside the narrowed space as it was
    fourth = enqueued[3]  # the 0.50 trial lay outside: clipped to the new bounds and choices
    assert fourth["lr"] == pytest.approx(1e-3 * 10**0.1) and fourth["weight_decay"] == pytest.approx(0.064)
    assert fourth["width"] == 40 and fourth["epochs"] == 10 and fourth["dropout"] == 0.25
    assert "batch_size" not in fourth  # 8 was dropped: the sampler picks it
    best_numbers = [t.number for t in best_complete(source)][:4]
    assert focused.user_attrs[LINEAGE_KEY] == {"from_study": "quick", "trials": best_numbers, "mode": "warm_start"}

    # A rerun (a resumed notebook) enqueues nothing twice.
    reopened = journal_study(tmp_path / "study.journal", "focused")
    assert warm_start(reopened, source, narrowed.space, n=4, source_name="quick") == []

    ran = []
    reopened.optimize(lambda trial: ran.append(narrowed.space.sample(trial)) or 0.0, n_trials=4)
    for params, trial, number in zip(enqueued, reopened.trials, best_numbers):
        assert trial.user_attrs[WARM_START_KEY] == number
        assert {k: trial.params[k] for k in params} == params
    assert all(narrowed.space.contains(p) for p in ran)


def test_warm_start_n_is_checked():
    with pytest.raises(ConfigError, match=r"^warm_start_n: "):
        warm_start(optuna.create_study(), [], SPACE, n=-1, source_name="quick")
