"""Run the phase notebooks headless with papermill, the way `tunewise run` and
`tunewise pipeline` do: executed notebook, self-contained HTML and summary.json in a
run folder, written atomically; a failed cell is a short message and a non-zero exit,
with the executed notebook kept (error marked) for a look.
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import papermill as pm

from tunewise import params as P
from tunewise import units
from tunewise.errors import ConfigError
from tunewise.report.html import write_html
from tunewise.atomic import write_text_atomic

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PRESETS = Path(__file__).resolve().parents[2] / "params"
# The folder reads as the pipeline: each phase's notebook is numbered by its place in it.
NOTEBOOK_FILES = {phase: f"{i}_{phase}.ipynb" for i, phase in enumerate(P.PHASES, start=1)}


@dataclass
class PhaseRun:
    phase: str
    ok: bool
    notebook: Path
    html: Path | None
    summary: dict[str, Any] | None
    wall_s: float
    error: str = ""
    skipped: bool = False
    extra: dict = field(default_factory=dict)


def notebook_for(phase: str) -> Path:
    if phase not in P.PHASES:
        raise ConfigError(f"phase: {phase!r} is not a phase; allowed: {', '.join(P.PHASES)}")
    path = NOTEBOOKS / NOTEBOOK_FILES[phase]
    if not path.is_file():
        raise ConfigError(f"phase: notebook {path} is missing from this install")
    return path


def phase_params(phase: str, file: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The phase's preset (params/PHASE.yaml) unless a file is given, then overrides;
    every key and value checked before anything runs."""
    if file is None and (PRESETS / f"{phase}.yaml").is_file():
        file = PRESETS / f"{phase}.yaml"
    return P.resolve(file, {**overrides, "phase": phase, "interactive": False})


def precheck(phase: str, p: dict[str, Any]) -> None:
    """The checks that need no study: search space, sampler, pruner, stop rules, dataset,
    model and workers, so bad input fails before a kernel starts (the notebook checks the rest)."""
    if phase in ("quick", "focused", "validate"):
        from tunewise.phases.tuning import check

        check(p)
    if phase in ("quick", "focused") and p["workers"] > 1:
        from tunewise.study.workers import plan_workers

        plan_workers(p, p["workers"], p["gpus"] or None)  # GPUs that exist, not asked of the CPU


def _error_lines(exc: pm.PapermillExecutionError) -> str:
    """Where and what, in one line; the executed notebook holds the traceback."""
    return f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"


class StudyWatch:
    """Prints a study's progress from this process while a notebook kernel (and perhaps
    its workers) runs it: one line whenever the counts change, polled every ``every_s``.
    A courtesy view: it never fails the run, and it creates no storage."""

    def __init__(self, phase: str, p: dict[str, Any], every_s: float = 5.0) -> None:
        from tunewise.study.workers import ProgressPrinter

        self._p = p
        self._every_s = every_s
        self._printer = ProgressPrinter(p["n_trials"], prefix=f"[{phase}] ")
        self._study = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunewise-study-watch", daemon=True)

    def __enter__(self) -> "StudyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the final counts

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            self.poll()

    def poll(self) -> None:
        import optuna

        from tunewise.study.storage import open_storage

        try:
            if self._study is None:
                storage = open_storage(self._p["storage"], self._p["run_dir"], must_exist=True)
                if self._p["study_name"] not in optuna.get_all_study_names(storage):
                    return
                self._study = optuna.load_study(study_name=self._p["study_name"], storage=storage)
            self._printer(self._study)
        except Exception:  # not there yet, or unreadable for a moment: the next poll tries again
            pass


def run_phase(phase: str, p: dict[str, Any], *, log_output: bool = False, progress: bool = False) -> PhaseRun:
    """Execute the phase notebook with parameters `p` into p['run_dir']; with `progress`,
    print the study's progress while it runs (quick and focused)."""
    notebook = notebook_for(phase)
    precheck(phase, p)
    out = Path(p["run_dir"])
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{phase}.ipynb"
    partial = out / f".{phase}.partial.ipynb"  # papermill rewrites its output as it goes
    start = time.perf_counter()
    error = ""
    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    # Every tunewise parameter is injected (the notebook picks what it uses), so papermill's
    # "unknown parameter" warnings would only be noise.
    papermill_log.setLevel(logging.ERROR)
    watch = StudyWatch(phase, p) if progress and phase in ("quick", "focused") else nullcontext()
    try:
        with watch:
            pm.execute_notebook(
                str(notebook), str(partial), parameters=p, cwd=os.getcwd(), kernel_name="python3",
                progress_bar=False, log_output=log_output, request_save_on_cell_execute=False,
            )
    except pm.PapermillExecutionError as exc:
        error = _error_lines(exc)
    finally:
        papermill_log.setLevel(level)
        if partial.exists():
            os.replace(partial, final)
    wall = time.perf_counter() - start
    html_path = write_html(final, out / f"{phase}.html") if final.exists() else None
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and not error else None
    if summary is not None:
        summary["notebook_wall_s"] = round(wall, 2)
        write_text_atomic(summary_path, json.dumps(summary, indent=2, default=str))
    return PhaseRun(phase, not error, final, html_path, summary, wall, error, skipped=bool(summary and summary.get("skipped")))


def pipeline(file: str | Path | None, overrides: dict[str, Any], out: Path, *, progress: bool = False) -> list[PhaseRun]:
    """quick, then focused (whose notebook shows the gate and skips its search when the
    quick gain was not worth it), then validate, then post-mortem; one run folder with
    a sub-folder per phase, one shared study storage, and an index page."""
    out = Path(out)
    storage = overrides.get("storage") or str(out / "study.journal")
    # One storage holds every phase's study: name them apart (the user's name as a prefix).
    named = "study_name" in overrides or (file is not None and "study_name" in P.read_params_file(file))
    prefix = P.resolve(file, overrides)["study_name"] + "-" if named else ""
    names = {ph: prefix + ph for ph in P.PHASES}
    per_phase = {
        "quick": {},
        "focused": {"source_study": names["quick"]},
        "validate": {"source_study": ""},  # the latest study with complete trials
        "postmortem": {"studies": []},  # every study in the storage
    }
    runs: list[PhaseRun] = []
    all_params = [
        phase_params(ph, file, {**overrides, **per_phase[ph], "study_name": names[ph], "run_dir": str(out / ph), "storage": storage})
        for ph in P.PHASES
    ]
    for phase, p in zip(P.PHASES, all_params):
        precheck(phase, p)  # every phase's input checked before the first one runs
    for phase, p in zip(P.PHASES, all_params):
        run = run_phase(phase, p, progress=progress)
        runs.append(run)
        write_index(out, runs)
        if not run.ok:
            break
    return runs


def write_index(out: Path, runs: list[PhaseRun]) -> Path:
    """A small page linking each phase's report, with its headline figures."""
    rows = []
    for r in runs:
        s = r.summary or {}
        status = "failed" if not r.ok else ("skipped search" if r.skipped else "done")
        link = f'<a href="{r.phase}/{r.phase}.html">{r.phase}</a>' if r.html else r.phase
        headline = html.escape(str(s.get("headline", "")))
        rows.append(f"<tr><td>{link}</td><td>{status}</td><td>{headline}</td><td>{units.duration(r.wall_s)}</td></tr>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tunewise run</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;text-align:left}</style></head>"
        f"<body><h1>tunewise run: {html.escape(out.name)}</h1><table><tr><th>phase</th><th>status</th>"
        f"<th>result</th><th>time</th></tr>{''.join(rows)}</table></body></html>"
    )
    return write_text_atomic(out / "index.html", page)



