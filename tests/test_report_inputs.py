"""Every report states what it ran on: a pipeline on a PNG-folder dataset with non-default
img_size and epochs shows, in each phase's HTML, the dataset path, img_size and epochs the
run used (marked as differing from the defaults), and no page presents the notebook's
committed defaults as the run's values without saying they are defaults."""

from __future__ import annotations

from pathlib import Path

import html
import json
import re

import pytest

from tunewise.cli import main
from tunewise.report.inputs import committed_defaults, summary_inputs
from tunewise import params as P


def page_text(path) -> str:
    page = path.read_text()
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


@pytest.fixture(scope="module")
def folder_pipeline(tmp_path_factory):
    from pngdata import write_png_folder

    root = tmp_path_factory.mktemp("inputs")
    images = write_png_folder(root / "animals", n_per_class=10)
    out = root / "run"
    code = main(["pipeline", "--set", f"dataset={images}", "--set", "img_size=40", "--set", "epochs=1",
                 "--set", "n_trials=3", "--set", "seeds=[1, 2]", "--set", "always_run=true", "--set", "warm_start_n=1",
                 "--set", "pruner=none", "--set", "batch_size=16",
                 "--set", "search_space={lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}}", "--out", str(out)])
    return code, images, out


def test_every_report_shows_the_values_the_run_used(folder_pipeline):
    code, images, out = folder_pipeline
    assert code == 0
    for phase in P.PHASES:
        text = page_text(out / phase / f"{phase}.html")
        assert "Run inputs: the values this run used" in text, phase
        assert str(images) in text, f"{phase}: the dataset path is not on the page"
        if phase == "postmortem":  # it reads studies: what they ran on, in the 'Built on' table
            assert re.search(rf"quick 3 \S+ {re.escape(str(images))} 40 1 ", text), text[:3000]
            continue
        assert re.search(r"★ img_size 40 32", text), f"{phase}: img_size 40 not shown as the run's, 32 as default"
        default = committed_defaults(phase)["epochs"]  # the notebook's committed default
        assert re.search(rf"★ epochs 1 {default}", text), f"{phase}: epochs 1 not shown as the run's, {default} as default"
        assert re.search(r"n_images 30 measured", text) and re.search(r"n_classes 3 measured", text)
        # The committed parameters cell is on the page, but labelled as the defaults it is.
        if "epochs : int = 5" in text:
            assert "committed DEFAULTS, not the values this run used" in text, phase
        summary = json.loads((out / phase / f"summary-{phase}.json").read_text())
        assert summary["inputs"]["data"]["dataset"] == str(images) and summary["inputs"]["data"]["img_size"] == 40
        assert summary["inputs"]["training"]["epochs"] == 1 and "epochs" in summary["inputs"]["differs_from_default"]
    focused = page_text(out / "focused" / "focused.html")
    assert "Built on" in focused and "quick 3" in focused


def test_committed_defaults_are_read_from_the_notebook():
    # the notebooks' cells hold their presets' values (tests/test_notebooks.py checks every one)
    for phase in ("quick", "focused"):
        preset = P.resolve(Path(__file__).resolve().parents[1] / "params" / f"{phase}.yaml")
        assert committed_defaults(phase)["n_trials"] == preset["n_trials"]
    assert committed_defaults("focused")["n_trials"] != committed_defaults("quick")["n_trials"]
    p = P.resolve(None, {"phase": "postmortem", "storage": "postgresql://u:secret@h/db"})
    inputs = summary_inputs(p)
    assert inputs["study"]["storage"] == "postgresql://u:***@h/db" and "data" not in inputs


def test_a_notebook_run_in_jupyterlab_knows_its_phase():
    """Nothing injects `phase` there: the notebook's own parameters tell it, so its summary
    (summary-PHASE.json) and inputs table are named for the right phase."""
    import tunewise.notebook as tw

    assert tw.resolve({"focus_mode": "warm_start"})["phase"] == "focused"
    assert tw.resolve({"params_out": "final.yaml"})["phase"] == "validate"
    assert tw.resolve({"max_latency_ms": 0.0, "studies": []})["phase"] == "postmortem"
    assert tw.resolve({"n_trials": 3})["phase"] == "quick"
    assert tw.resolve({"phase": "validate", "focus_mode": "resume"})["phase"] == "validate"  # injected wins
