"""Real-browser checks, in Debian's Chromium driven by Playwright:

- the quick notebook run cell by cell in JupyterLab: the search-space widgets render and
  moving them changes the space the study searches; the live chart gains points as trials
  finish; the progress bar reaches the end;
- each phase's shared HTML report opened from a file:// URL with the network cut off:
  every chart draws, nothing is fetched, no console error;
- the study storage the phases wrote, opened in jupyterlab-optuna's dashboard from the
  JupyterLab launcher.

Marked `browser`: `make test` runs them (CI too); skip them locally with
`make test PYTEST_ARGS='-m "not browser"'`. Where Chromium is missing they fail, never skip.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import optuna
import pytest

from browser_helpers import ROOT, artifact, browser, chromium_missing, jupyter_lab
from tunewise import params as P
from tunewise.cli import main
from tunewise.study.storage import open_storage
from tunewise.records import SPACE_KEY

pytestmark = pytest.mark.browser

PLOTLY_MIME = "application/vnd.plotly.v1+json"

# The smoke run of the quick notebook: 3 one-epoch trials on digits, two searched parameters.
SMOKE_PARAMETERS = '''dataset = "digits"
epochs = 1
n_trials = 3
batch_size = 64
study_name = "browser"
run_dir = "run"
pruner = {"name": "none"}
search_space = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
}
interactive = True
'''
# Ten steps of the log slider (ten values per decade) take the upper bound a decade down.
NARROWED_LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    why = chromium_missing()
    if why:
        pytest.fail(why, pytrace=False)  # loud in CI; developers skip with -m "not browser"
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    """JupyterLab's root and working folder: the smoke notebook and the pipeline's run."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def pipeline_run(lab_root):
    """The four phases, small, into <lab_root>/pipeline (one study journal for all)."""
    out = lab_root / "pipeline"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEWISE_CACHE_DIR", str(lab_root / ".cache"))
        code = main(["pipeline", "--params", str(ROOT / "params" / "demo.yaml"), "--set", "n_trials=3", "--set", "epochs=1",
                     "--set", "always_run=true", "--set", "warm_start_n=1", "--set", "seeds=[42, 777]", "--out", str(out)])
    assert code == 0, "tunewise pipeline failed"
    return out


@pytest.fixture(scope="module")
def lab(lab_root):
    settings = lab_root / ".jupyter-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "get notified about Jupyter news?" toast over the screenshots (and no news fetch).
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    with jupyter_lab(lab_root, env={"TUNEWISE_CACHE_DIR": str(lab_root / ".cache")}) as server:
        yield server


class Watch:
    """A page's console errors, uncaught exceptions and failed requests."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


# --- the shared HTML reports ----------------------------------------------------------

_PLOTS_JS = """() => [...document.querySelectorAll('.tunewise-plot')].map(d => ({
    title: (d.layout && d.layout.title && (d.layout.title.text || d.layout.title)) || d.id,
    drawn: !!d._fullLayout,
    svg: d.querySelectorAll('svg.main-svg').length,
    data: (d._fullData || []).filter(t => t.visible === true).length,
    traces: d.querySelectorAll('svg.main-svg g.trace, svg.main-svg g.hm').length,  // g.hm: a heatmap (confusion matrix)
    marks: d.querySelectorAll('svg.main-svg g.trace path, svg.main-svg g.trace rect, svg.main-svg g.hm image').length,
    notes: d.querySelectorAll('svg.main-svg .annotation-text').length,
    width: d.getBoundingClientRect().width, height: d.getBoundingClientRect().height,
}))"""


@pytest.mark.parametrize("phase", P.PHASES)
def test_report_charts_draw_offline_from_a_file(chromium, phase, pipeline_run):
    """The phase's .html from file:// with the network cut: every plotly output of the
    executed notebook is a chart with drawn traces, and the page asks nothing of the network."""
    html = pipeline_run / phase / f"{phase}.html"
    nb = nbformat.read(pipeline_run / phase / f"{phase}.ipynb", as_version=4)
    expected = sum(PLOTLY_MIME in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))

    context = chromium.new_context(offline=True, viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_files)
    page = context.new_page()
    watch = Watch(page)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:", "about:")) else outside.append(r.url))
    try:
        page.goto(html.as_uri(), wait_until="load")
        page.wait_for_function("() => [...document.querySelectorAll('.tunewise-plot')].every(d => d._fullLayout)", timeout=30_000)
        plots = page.evaluate(_PLOTS_JS)
        page.screenshot(path=artifact(f"report-{phase}.png"), full_page=True)
    finally:
        context.close()

    assert not outside, f"{phase}.html tried to fetch {sorted(set(outside))}"
    assert not [u for u in failed if u not in outside], f"{phase}.html: requests failed: {failed}"
    assert not watch.errors, f"{phase}.html: {watch.errors}"
    assert len(plots) == expected, f"{phase}.html has {len(plots)} charts, its notebook {expected} plotly outputs"
    for plot in plots:
        name = f"{phase}.html: chart {plot['title']!r}"
        assert plot["drawn"] and plot["svg"] >= 1, f"{name} was not drawn: {plot}"
        assert plot["width"] > 100 and plot["height"] > 100, f"{name} has no room: {plot}"
        if plot["data"]:
            assert plot["traces"] >= 1 and plot["marks"] >= 1, f"{name}: the SVG has no traces: {plot}"
        else:  # a note figure ("too little to draw"): its message must show
            assert plot["notes"] >= 1, f"{name} has neither traces nor a note: {plot}"


# --- JupyterLab with the widgets ------------------------------------------------------


def _smoke_notebook(path: Path, extra: str = "") -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / "1_quick.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = SMOKE_PARAMETERS + extra
    nbformat.write(nb, path)
    return nb


def _index(nb, text: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source)


def _run_from(page, cells, first: int, count: int) -> None:
    """Select cell `first` and press Shift+Enter `count` times (run it and those after).
    Paced: on a loaded machine keys pressed back to back before the selection settled were
    lost, and the later cells ran without the imports."""
    cells.nth(first).locator(".jp-Cell-inputWrapper").click(position={"x": 5, "y": 5})
    page.wait_for_timeout(300)
    page.keyboard.press("Escape")  # command mode
    for _ in range(count):
        page.wait_for_timeout(250)
        page.keyboard.press("Shift+Enter")


def _tracebacks(page) -> list[str]:
    """The error outputs the notebook shows (JupyterLab renders them as stderr)."""
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    return [text[-1500:] for text in errors.all_inner_texts()]


def _prompt(cells, i: int) -> str:
    return cells.nth(i).locator(".jp-InputArea-prompt").inner_text().strip()


@pytest.mark.parametrize("workers", [1, 2])
def test_quick_notebook_in_jupyterlab_widgets_live_chart_progress(chromium, lab, lab_root, workers):
    """Cell by cell in JupyterLab; with workers=2 the trials run in two worker processes
    and the same chart and progress bar follow the study from the notebook's kernel."""
    base, token = lab
    n = 3 if workers == 1 else 4  # two workers finish trials in pairs: one more pair to see the chart grow
    name = "quick.ipynb" if workers == 1 else f"quick-{workers}-workers.ipynb"
    run = "run" if workers == 1 else f"run-{workers}-workers"
    shot = "" if workers == 1 else f"-{workers}-workers"  # screenshot names
    # Two workers: 3 epochs a trial, so each pair takes longer than the notebook's 1 s poll
    # (at 1 epoch, on a quiet machine, both pairs could land between two polls: the chart
    # then jumped 0 -> 4 and the growth this test looks for was never on screen).
    slower = "" if workers == 1 else "epochs = 3\n"
    nb = _smoke_notebook(lab_root / name, f'n_trials = {n}\nworkers = {workers}\nrun_dir = "{run}"\n{slower}')
    editor_cell, search_cell = _index(nb, "space_editor("), _index(nb, "tw.search(")
    last = len(nb.cells) - 1

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    watch = Watch(page)
    try:
        # A workspace of its own: only this notebook open (JupyterLab restores earlier tabs).
        page.goto(f"{base}/lab/workspaces/quick-{workers}/tree/{name}?token={token}&reset")
        cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        cells.nth(last).wait_for(timeout=60_000)
        page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName", has_text="Python 3").wait_for(timeout=60_000)

        # Up to the search-space editor.
        _run_from(page, cells, 0, editor_cell + 1)
        editor = cells.nth(editor_cell).locator(".jp-OutputArea-output .widget-vbox").first
        try:
            editor.wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=artifact(f"lab-no-editor{shot}.png"))
            raise AssertionError(f"no search-space editor; errors shown: {_tracebacks(page)}") from None
        lr_row = editor.locator(".widget-hbox", has_text="lr").first
        batch = editor.locator(".widget-hbox", has_text="batch_size").locator("select[multiple]")
        status = editor.locator(".widget-html-content").last
        readout = lr_row.locator(".widget-label", has_text=" to ")  # the editor's own readout ("1e-05-0.01" read as one number)
        # Both lines are drawn from the kernel's widget state, which may land just after the editor.
        for line in (readout, status):
            page.wait_for_function("el => el.textContent.trim().length > 0", arg=line.element_handle(), timeout=15_000)
        assert readout.text_content() == "0.0001 to 0.01"
        assert batch.evaluate("s => [...s.selectedOptions].map(o => o.textContent)") == ["32", "64"]
        assert status.text_content().startswith("2 searched, 0 fixed")
        before = status.text_content()
        editor.screenshot(path=artifact(f"lab-editor-before{shot}.png"))

        # Move the lr slider's upper handle a decade down, keep only batch size 64.
        upper = lr_row.locator(".noUi-handle-upper")
        upper.focus()
        for _ in range(10):
            upper.press("ArrowLeft")
        batch.locator("option", has_text="64").click()
        page.wait_for_function("([el, old]) => el.textContent !== old", arg=[status.element_handle(), before], timeout=10_000)
        # The readout is the kernel's (a Label it updates on each step): wait for the last step to land.
        page.wait_for_function("([el, want]) => el.textContent === want", arg=[readout.element_handle(), "0.0001 to 0.001"],
                               timeout=15_000)
        assert readout.text_content() == "0.0001 to 0.001"
        assert batch.evaluate("s => [...s.selectedOptions].map(o => o.textContent)") == ["64"]
        editor.screenshot(path=artifact(f"lab-editor-after{shot}.png"))

        # The rest, watching the live chart and the progress bar while the trials run.
        _run_from(page, cells, editor_cell + 1, last - editor_cell)
        out = cells.nth(search_cell)
        points_seen: list[int] = []
        labels_seen: list[str] = []
        started = time.monotonic()
        deadline = started + 90
        def look() -> None:
            n = out.locator(".js-plotly-plot .scatterlayer .trace .points path").count()
            if not points_seen or points_seen[-1] != n:
                points_seen.append(n)
            # The label reads "k / n trials, best ..."; skip it while it is still being drawn.
            label = [t for t in out.locator(".widget-html-content", has_text="trials").all_inner_texts() if " / " in t]
            if label and (not labels_seen or labels_seen[-1] != label[0]):
                labels_seen.append(label[0])

        while True:
            look()
            prompts = [_prompt(cells, i) for i in range(search_cell, last + 1)]
            if all(p[1:-2].strip().isdigit() for p in prompts):
                break  # every cell from the search on has run
            if time.monotonic() > started + 5 and all("*" not in p for p in prompts):
                break  # nothing queued any more (a cell failed, the rest was not run)
            assert time.monotonic() < deadline, f"the notebook did not finish in 90 s: prompts {prompts}"
            time.sleep(0.15)
        look()  # once more after the last cell: the final redraw may land after the last poll
        page.screenshot(path=artifact(f"lab-notebook-end{shot}.png"))
        out.screenshot(path=artifact(f"lab-live-chart{shot}.png"))
        assert not _tracebacks(page), f"a cell failed: {_tracebacks(page)}"
        assert _prompt(cells, last)[1:-2].strip().isdigit(), "the last cell did not run"

        # The live chart: a point per finished trial, added as they finished.
        assert points_seen[-1] == n, f"live chart points over time: {points_seen}"
        assert points_seen == sorted(points_seen), f"live chart lost points: {points_seen}"
        assert len({k for k in points_seen if 0 < k < n}) >= 1, f"the chart did not grow trial by trial: {points_seen}"
        # The progress bar at the end, with its label.
        bar = out.locator(".widget-hprogress .progress-bar")
        assert bar.evaluate("b => b.style.width") == "100%"
        assert out.locator(".widget-html-content", has_text=f"{n} / {n} trials").count() == 1
        finished = [int(text.split(" / ")[0]) for text in labels_seen]
        assert finished == sorted(finished) and finished[-1] == n and len(finished) >= 2, labels_seen
        if workers > 1:
            assert out.locator("caption", has_text=f"{workers} workers filled the study together").count() == 1
        # The final static charts render as plotly in JupyterLab too.
        charts = cells.nth(_index(nb, "final_charts(")).locator(".js-plotly-plot .main-svg g.trace")
        assert charts.count() >= 2
        assert not watch.errors, watch.errors
    finally:
        context.close()

    # The study searched what the sliders said.
    storage = open_storage(str(lab_root / run / "study.journal"), lab_root / run)
    study = optuna.load_study(study_name="browser", storage=storage)
    assert study.user_attrs[SPACE_KEY] == {"lr": NARROWED_LR, "batch_size": {"type": "categorical", "choices": [64]}}
    assert len(study.trials) == n and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.user_attrs["tunewise.worker"]["pid"] for t in study.trials}) == workers
    for t in study.trials:
        assert 1.0e-4 <= t.params["lr"] <= 1.0e-3 and t.params["batch_size"] == 64, t.params
    assert json.loads((lab_root / run / "summary.json").read_text())["n_finished"] == n


# --- jupyterlab-optuna ----------------------------------------------------------------


def test_phase_storage_opens_in_optuna_dashboard_from_the_launcher(chromium, pipeline_run, lab, lab_root):
    base, token = lab
    journal = (pipeline_run / "study.journal").relative_to(lab_root)
    names = sorted(optuna.get_all_study_names(open_storage(str(pipeline_run / "study.journal"), pipeline_run)))
    assert names == ["demo-focused", "demo-quick"]

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    watch = Watch(page)
    try:
        page.goto(f"{base}/lab?reset&token={token}")  # a fresh workspace: the launcher
        card = page.locator(".jp-LauncherCard", has_text="Optuna Dashboard")
        card.wait_for(timeout=60_000)
        card.click()
        page.get_by_text(f"Your current working directory is {lab_root}").wait_for(timeout=30_000)
        page.get_by_label("Storage URL or File Path (Required)").fill(str(journal))
        page.get_by_role("button", name="Create").click()
        for name in names:
            page.get_by_text(name, exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=artifact("optuna-dashboard-studies.png"))
        page.get_by_text("demo-quick").first.click()
        page.get_by_text("demo-quick (id=0)").wait_for(timeout=30_000)  # the study's page: its history chart
        page.wait_for_selector(".js-plotly-plot .main-svg g.trace", timeout=30_000)
        page.screenshot(path=artifact("optuna-dashboard-demo-quick.png"))
        assert not watch.errors, watch.errors
    finally:
        context.close()
