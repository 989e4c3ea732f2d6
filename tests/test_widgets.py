"""The search-space editor: its widgets start at the space, moving them changes exactly
the dict a params file holds, and what it saves is what `params.resolve` reads."""

from __future__ import annotations

import pytest
from ipywidgets import FloatRangeSlider, IntRangeSlider, SelectionRangeSlider, SelectMultiple

from tunewise import params
from tunewise.errors import ConfigError
from tunewise.params import SEED_SPACE
from tunewise.search.space import SearchSpace
from tunewise.report.widgets import SpaceEditor

MIXED = {
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    "epochs": {"type": "int", "low": 3, "high": 9, "step": 2},
    "warmup_epochs": {"type": "float", "low": 0, "high": 2, "step": 0.5},
    "batch_size": {"type": "int", "low": 8, "high": 256, "log": True},
    "flag": {"type": "categorical", "choices": [True, 1, None, "x"]},
    "label_smoothing": 0.1,
}


def rows(editor: SpaceEditor) -> dict:
    return {row.name: row for row in editor._rows}


def canonical(space: dict) -> dict:
    return SearchSpace.from_dict(space).to_dict()


@pytest.mark.parametrize("space", [SEED_SPACE, MIXED], ids=["seed", "mixed"])
def test_starts_at_the_space_exactly(space):
    editor = SpaceEditor(space)
    assert editor.value == space
    assert canonical(editor.value) == canonical(space)


def test_widget_kinds_and_widened_bounds():
    r = rows(SpaceEditor({**SEED_SPACE, **MIXED}))
    lr = r["lr"].chooser
    assert isinstance(lr, SelectionRangeSlider)
    assert lr.options[0][1] == 1e-6 and lr.options[-1][1] == 0.1  # a decade each way
    assert lr.value == (1e-5, 1e-2)
    assert isinstance(r["batch_size"].chooser, SelectionRangeSlider)  # int + log
    assert isinstance(r["dropout"].chooser, FloatRangeSlider)
    assert (r["dropout"].chooser.min, r["dropout"].chooser.max) == (0.0, 0.6)  # one width, not below 0
    assert (r["weight_decay"].chooser.min, r["weight_decay"].chooser.max) == (0.0, 0.2)
    # momentum above 1 is refused by training: the slider stops at the original 0.99.
    assert (r["momentum"].chooser.min, r["momentum"].chooser.max) == (0.61, 0.99)
    epochs = r["epochs"].chooser
    assert isinstance(epochs, IntRangeSlider) and (epochs.min, epochs.max, epochs.step) == (1, 15, 2)
    assert isinstance(r["optimizer"].chooser, SelectMultiple)
    assert "fixed at 0.1" in r["label_smoothing"].widget.children[1].value


def test_log_slider_maps_to_its_values():
    editor = SpaceEditor(SEED_SPACE)
    rows(editor)["lr"].chooser.value = (1e-4, 1e-3)
    assert editor.value["lr"] == {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}
    labels = dict((v, label) for label, v in rows(editor)["lr"].chooser.options)
    assert labels[1e-4] == "0.0001" and labels[2.5e-5] == "2.5e-05"
    rows(editor)["lr"].chooser.index = (0, len(rows(editor)["lr"].chooser.options) - 1)
    assert (editor.value["lr"]["low"], editor.value["lr"]["high"]) == (1e-6, 0.1)


def test_int_steps_and_float_steps_stay_on_the_grid():
    editor = SpaceEditor(MIXED)
    rows(editor)["epochs"].chooser.value = (5, 13)
    assert editor.value["epochs"] == {"type": "int", "low": 5, "high": 13, "step": 2}
    assert type(editor.value["epochs"]["low"]) is int
    rows(editor)["batch_size"].chooser.value = (16, 1000)
    assert editor.value["batch_size"] == {"type": "int", "low": 16, "high": 1000, "log": True}
    rows(editor)["warmup_epochs"].chooser.value = (0.1 + 0.2 + 0.2, 3.0)  # slider float noise
    assert editor.value["warmup_epochs"] == {"type": "float", "low": 0.5, "high": 3.0, "step": 0.5}
    SearchSpace.from_dict(editor.value)


def test_linear_float_changes_and_untouched_bounds_keep_their_type():
    editor = SpaceEditor({"dropout": {"type": "float", "low": 0, "high": 0.3}})
    assert type(editor.value["dropout"]["low"]) is int  # as the file wrote it
    rows(editor)["dropout"].chooser.value = (0.05, 0.3)
    assert editor.value["dropout"] == {"type": "float", "low": 0.05, "high": 0.3}


def test_categorical_selection_keeps_types_and_one_choice():
    editor = SpaceEditor(MIXED)
    assert [type(v) for v in editor.value["flag"]["choices"]] == [bool, int, type(None), str]
    flag = rows(editor)["flag"].chooser
    flag.value = (1, 3)  # options carry positions: True and 1 stay apart
    assert editor.value["flag"]["choices"] == [1, "x"]
    assert type(editor.value["flag"]["choices"][0]) is int
    flag.value = ()
    assert editor.value["flag"]["choices"] == [1, "x"]  # the last selection stays
    rows(editor)["optimizer"].chooser.value = (1,)
    assert editor.value["optimizer"] == {"type": "categorical", "choices": ["sgd"]}
    assert editor.value["momentum"]["when"] == {"optimizer": "sgd"}


def test_fix_a_parameter_at_one_value():
    editor = SpaceEditor(MIXED)
    r = rows(editor)
    r["epochs"].fix.value = True
    assert editor.value["epochs"] == 7 and r["epochs"].chooser.disabled
    r["epochs"].fixed_input.value = 4
    r["optimizer"].fix.value = True
    r["optimizer"].fixed_input.value = 1
    assert (editor.value["epochs"], editor.value["optimizer"]) == (4, "sgd")
    assert "fixed" in editor.status.value and "color" not in editor.status.value
    r["optimizer"].fixed_input.value = 0  # adamw: momentum's condition can never hold
    assert "can never hold" in editor.status.value
    with pytest.raises(ConfigError, match="can never hold"):
        editor.save("unused.yaml")
    r["epochs"].fix.value = False
    assert editor.value["epochs"] == MIXED["epochs"]


def test_on_change_gets_the_new_value():
    editor = SpaceEditor(SEED_SPACE)
    seen = []
    editor.on_change(seen.append)
    rows(editor)["dropout"].chooser.value = (0.1, 0.2)
    assert seen[-1]["dropout"] == {"type": "float", "low": 0.1, "high": 0.2}


def test_save_is_what_params_resolve_reads(tmp_path):
    editor = SpaceEditor(MIXED)
    rows(editor)["batch_size"].chooser.value = (16, 100)
    rows(editor)["flag"].chooser.value = (0, 2)
    path = editor.save(tmp_path / "space.yaml")
    assert path.read_text().startswith("search_space:\n")
    assert params.resolve(path)["search_space"] == editor.value
    assert [p.name for p in tmp_path.iterdir()] == ["space.yaml"]  # no temporary left behind


def test_shows_itself_in_a_notebook_and_refuses_a_broken_space():
    bundle = SpaceEditor(SEED_SPACE)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    with pytest.raises(ConfigError, match="lr"):
        SpaceEditor({"lr": {"type": "float", "low": 1, "high": 0}})


def test_readouts_say_the_range_and_the_selection_in_words():
    """"1e-05 to 0.01", not the slider's "1e-05-0.01"; a categorical list says what it searches."""
    r = rows(SpaceEditor(SEED_SPACE))
    lr = r["lr"]
    assert lr.chooser.readout is False and lr.readout.value == "1e-05 to 0.01"
    lr.chooser.value = (1e-4, 1e-3)
    assert lr.readout.value == "0.0001 to 0.001"
    batch = r["batch_size"]
    assert batch.readout.value.startswith("all 3 searched")
    batch.chooser.value = (0, 2)
    assert batch.readout.value == "2 of 3 searched: 8, 32"
    assert batch.readout in batch.widget.children
