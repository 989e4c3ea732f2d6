"""The phase notebooks as users run them: committed clean, parameters that papermill
shows and that match the presets, and real headless runs through `tunewise run`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import optuna
import papermill as pm
import pytest

from tunewise import execute
from tunewise import params as P
from tunewise.phases.source import LATER_PHASES, SOURCE_KEYS
from tunewise.cli import main
from tunewise.study.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def phase_of(path: Path) -> str:
    """1_quick.ipynb -> quick: the folder's names are the phases in pipeline order."""
    return path.stem.split("_", 1)[1]


def test_every_phase_has_a_notebook():
    assert sorted(phase_of(p) for p in NOTEBOOKS) == sorted(P.PHASES)


def test_the_folder_lists_the_notebooks_in_pipeline_order():
    assert [phase_of(p) for p in NOTEBOOKS] == list(P.PHASES)  # what pytest and the file browser see
    assert [p.name for p in NOTEBOOKS] == [execute.notebook_for(ph).name for ph in P.PHASES]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {cell.id} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_typed_commented_literals_matching_the_preset(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    inferred = pm.inspect_notebook(str(path))
    assert inferred, "papermill --help-notebook must list the parameters"
    for name, info in inferred.items():
        assert name in P.DEFAULTS, f"{path.name}: parameter {name} is not a tunewise parameter"
        assert info["inferred_type_name"] != "None", f"{path.name}: {name} has no type hint"
        assert info["help"], f"{path.name}: {name} has no comment"
    preset = P.resolve(ROOT / "params" / f"{phase_of(path)}.yaml")
    # A later phase takes its data and fixed settings from the study it builds on (the quick
    # one, by default): its cell's defaults are the quick preset's there.
    quick = P.resolve(ROOT / "params" / "quick.yaml")
    inherited = set(SOURCE_KEYS) if phase_of(path) in LATER_PHASES else set()
    namespace: dict = {}
    exec(tagged[0].source, namespace)  # literals only: safe, and what papermill would run
    for name in inferred:
        value = namespace[name]
        expected = quick[name] if name in inherited else preset[name]
        # a notebook writes "" where the YAML leaves a path out (papermill needs a str)
        assert value == expected or (value == "" and expected is None), f"{path.name}: {name}={value!r}, preset has {expected!r}"


def _no_external_fetches(page: str) -> None:
    import re

    for attr in re.findall(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="([^"]+)"', page):
        assert not attr.startswith(("http:", "https:", "//")), f"the report fetches {attr}"


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The whole pipeline once, small: quick, focused (forced to run), validate, post-mortem."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    code = main(["pipeline", "--params", str(ROOT / "params" / "demo.yaml"), "--set", "n_trials=5", "--set", "epochs=1",
                 "--set", "always_run=true", "--set", "warm_start_n=2", "--set", "seeds=[42, 777]", "--out", str(out)])
    return code, out


def test_pipeline_runs_every_phase_into_one_folder(pipeline_run):
    code, out = pipeline_run
    assert code == 0
    for phase in P.PHASES:
        for name in (f"{phase}.ipynb", f"{phase}.html", "summary.json"):
            assert (out / phase / name).is_file(), f"{phase}/{name} missing"
        nb = nbformat.read(out / phase / f"{phase}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{phase} notebook has an error output"
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{phase} notebook shows nothing"
    index = (out / "index.html").read_text()
    assert all(f'href="{ph}/{ph}.html"' in index for ph in P.PHASES)
    storage = open_storage(str(out / "study.journal"), out)
    assert sorted(optuna.get_all_study_names(storage)) == ["demo-focused", "demo-quick"]
    advice = optuna.load_study(study_name="demo-quick", storage=storage).user_attrs["tunewise.advice"]
    assert advice["verdict"] == "skip" and "1797 images is under 10K" in advice["reasons"][0]
    report = (out / "postmortem" / "postmortem.html").read_text()
    assert "Advice at the start, and what happened" in report
    assert "Warm starts: how early each reached its source" in report and "<td>demo-focused</td><td>demo-quick</td>" in report


def test_quick_and_focused_summaries_count_the_studies(pipeline_run):
    _, out = pipeline_run
    quick = json.loads((out / "quick" / "summary.json").read_text())
    assert quick["n_finished"] == 5 and quick["baseline_value"] is not None and quick["notebook_wall_s"] > 0
    assert set(quick) >= {"best_value", "best_params", "trials", "stop_reason", "gain", "elapsed_s"}
    focused = json.loads((out / "focused" / "summary.json").read_text())
    assert focused["n_finished"] == 5 and focused["source_study"] == "demo-quick"
    assert focused["baseline_value"] == quick["baseline_value"]  # measured against the quick baseline
    study = optuna.load_study(study_name="demo-focused", storage=open_storage(str(out / "study.journal"), out))
    warm = [t for t in study.trials if "tunewise.warm_start_from" in t.user_attrs]
    assert len(warm) == 2 and study.user_attrs["tunewise.lineage"]["from_study"] == "demo-quick"
    narrowed = focused["narrowed"]["space"]
    for t in study.trials:  # every focused trial lies inside the narrowed space
        lr = narrowed["lr"]
        assert lr["low"] <= t.params["lr"] <= lr["high"]


def test_validate_writes_verdict_noise_and_final_params(pipeline_run):
    _, out = pipeline_run
    summary = json.loads((out / "validate" / "summary.json").read_text())
    assert summary["seeds"] == [42, 777] and set(summary["configs"]) >= {"baseline", "best"}
    assert summary["comparison"]["verdict"] in ("real gain", "real loss", "within noise")
    final = P.resolve(summary["params_file"])
    assert final["search_space"] == {}
    storage = open_storage(str(out / "study.journal"), out)
    for name in ("demo-quick", "demo-focused"):
        assert optuna.load_study(study_name=name, storage=storage).user_attrs["tunewise.noise_floor"] == pytest.approx(summary["noise_std"])


def test_reports_are_self_contained_with_interactive_charts(pipeline_run):
    _, out = pipeline_run
    page = (out / "postmortem" / "postmortem.html").read_text()
    _no_external_fetches(page)
    assert page.count("Plotly.newPlot(") >= 8  # history, ROI, importances, contour, ... for each study
    assert page.count("function(") > 1000  # plotly.js itself is inside the page...
    assert page.count("plotly.js v") <= 2  # ...once
    _no_external_fetches((out / "quick" / "quick.html").read_text())


def test_a_failed_cell_exits_nonzero_and_keeps_the_notebook(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "validate", "--set", "source_study=nope", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "validate notebook failed at cell" in err
    assert "ConfigError: study 'nope' is not in" in err and "studies there: none" in err
    assert len(err.splitlines()) <= 3
    nb = nbformat.read(out / "validate.ipynb", as_version=4)
    assert any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert (out / "validate.html").is_file() and not list(out.glob(".*partial*"))


def test_bad_parameters_fail_before_a_kernel_starts(tmp_path, capsys):
    code = main(["run", "quick", "--set", "model=test_convnxt", "--out", str(tmp_path / "r")])
    assert code == 2 and "did you mean 'test_convnext'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_running_the_same_command_again_resumes_the_study(tmp_path):
    out = tmp_path / "run"
    args = ["run", "quick", "--set", "epochs=1", "--set", "search_space={lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}",
            "--set", "batch_size=64", "--set", "pruner=none", "--out", str(out)]
    assert main([*args, "--set", "n_trials=2"]) == 0
    assert main([*args, "--set", "n_trials=3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_finished"] == 3 and summary["study_name"] == "quick"
    study = optuna.load_study(study_name="quick", storage=open_storage(str(out / "study.journal"), out))
    assert len(study.trials) == 3 and study.trials[0].user_attrs["tunewise.baseline"] is True


def test_postmortem_notebook_passes_nbval_with_its_defaults(tmp_path):
    """`pytest --nbval-lax` over the committed post-mortem notebook, run with its own
    defaults (runs/tunewise/study.journal next to it) on a small real study."""
    import shutil
    import subprocess
    import sys

    nb = tmp_path / "5_postmortem.ipynb"
    shutil.copy(ROOT / "notebooks" / "5_postmortem.ipynb", nb)
    storage = open_storage(None, tmp_path / "runs" / "tunewise")
    study = optuna.create_study(study_name="quick", storage=storage, direction="maximize")
    study.optimize(lambda t: 1 - (t.suggest_float("lr", 1e-4, 1e-1, log=True) - 0.01) ** 2 + t.suggest_float("dropout", 0, 0.3) / 10, n_trials=12)
    env = {k: v for k, v in os.environ.items() if k != "TUNEWISE_RUN_DIR"}  # its own runs/tunewise, as committed
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(nb)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# --- parameters cells and errors in a kernel, as JupyterLab runs them -------------------


@pytest.fixture
def shell():
    """An IPython shell like JupyterLab's kernel (history kept: `_ih` holds the cells run),
    cleared afterwards so other tests see no IPython."""
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    yield lambda source: sh.run_cell(source, store_history=True)
    InteractiveShell.clear_instance()


def _parameters_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # without IPython's colours


RESOLVE_CELL = "import tunewise.notebook as tw\np = tw.resolve(globals())"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_interactive_resolution_records_the_notebooks_own_phase(path, shell):
    """Run cell by cell in JupyterLab (no papermill), each notebook resolves to its phase."""
    assert shell(_parameters_cell(path)).success
    result = shell(RESOLVE_CELL)
    assert result.success, result.error_in_exec
    assert shell("p['phase']").result == phase_of(path)


def test_a_typo_in_the_parameters_cell_is_an_error_with_a_suggestion(shell, capsys):
    shell(_parameters_cell(NOTEBOOKS[0]) + "\nn_trail = 3")
    result = shell(RESOLVE_CELL)
    assert not result.success
    out = _plain(capsys.readouterr().out)
    assert "ConfigError: parameters cell: 'n_trail' is not a tunewise parameter (did you mean 'n_trials'?)" in out
    assert "Traceback" not in out and "notebook.py" not in out  # the CLI's one line, not a traceback
    assert "%tb" in out
    shell("%tb")  # the traceback on request
    assert "notebook.py" in _plain(capsys.readouterr().out)
    # fixed and run again: resolves (the earlier typo in the history no longer counts)
    shell(_parameters_cell(NOTEBOOKS[0]))
    assert shell(RESOLVE_CELL).success


def test_other_errors_keep_ipythons_traceback_and_tunewise_traceback_on_request(shell, capsys, monkeypatch):
    shell("import tunewise.notebook as tw")
    shell("def broken():\n    raise ValueError('not tunewise')\nbroken()")
    out = _plain(capsys.readouterr().out)
    assert "Traceback" in out and "broken()" in out and "ValueError" in out
    monkeypatch.setenv("TUNEWISE_TRACEBACK", "1")
    shell("tw.load_study({'storage': None, 'run_dir': '/nonexistent-tunewise'}, 'nope')")
    out = _plain(capsys.readouterr().out)
    assert "Traceback" in out and "ConfigError" in out and "notebook.py" in out


def test_papermill_shows_a_parameters_cell_typo_as_one_line(tmp_path):
    """A typo added to the parameters cell, run through papermill with every parameter
    injected: the cell fails with the one-line message, and nothing was written."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\nn_trail = 3  # a typo"
    src, out = tmp_path / "typo.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    p = P.resolve(None, {"n_trials": 2, "epochs": 1, "run_dir": str(tmp_path / "run"), "interactive": False})
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(src), str(out), parameters=dict(p), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "ConfigError" and "did you mean 'n_trials'" in err.value.evalue
    executed = nbformat.read(out, as_version=4)
    [error] = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    shown = _plain("\n".join(error.traceback))
    assert "parameters cell: 'n_trail' is not a tunewise parameter (did you mean 'n_trials'?)" in shown
    assert len(error.traceback) <= 2 and "notebook.py" not in shown
    assert not (tmp_path / "run").exists()


def test_table_helper_formats_numbers_and_aligns_columns_by_their_content():
    from tunewise import notebook as tw

    page = tw.table([{"parameter": "lr", "value": 0.00314288089084011, "n": 3},
                     {"parameter": "space", "value": {"lr": 1e-5, "batch_size": 32}, "n": None}], "t").data
    assert "0.003143" in page and "0.00314288" not in page  # 4 significant digits
    assert "lr 1e-05, batch_size 32" in page  # a mapping as pairs, not a dict's repr
    assert "<td>0.003143</td>" in page  # a mixed column: left, like text
    assert "<td class='num'>3</td>" in page and "td.num" in page  # numbers only: right-aligned
    assert ">–</td>" in page  # None


def test_result_shows_trials_by_state_and_best_parameters_one_per_row():
    from tunewise import notebook as tw

    summary = {"study_name": "s", "best_value": 0.97222, "baseline_value": 0.9, "gain": 0.07222,
               "relative_gain": 0.0802, "elapsed_s": 2400.0, "stop_reason": "budget",
               "stop_details": {"message": "4 of 4 trials finished."}, "n_finished": 4,
               "trials": {"complete": 3, "pruned": 1, "fail": 0, "running": 0, "waiting": 0},
               "best_params": {"lr": 0.00314288089084011, "batch_size": 32}}
    page = tw.show_result(summary).data
    assert "{'complete'" not in page and "<th class='num'>complete</th><th class='num'>pruned</th>" in page
    assert "<td>lr</td>" in page and "0.003143" in page and "0.0031428808" not in page
    assert "+0.0722 (+8.0%)" in page and "40 min" in page and "0.9722" in page
    skipped = tw.show_result({"skipped": True, "headline": "skipped: gain under 5%"}).data
    assert "skipped: gain under 5%" in skipped
