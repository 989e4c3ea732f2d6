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
import shutil
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import papermill as pm

from tunewise import config
from tunewise import params as P
from tunewise import units
from tunewise.errors import ConfigError
from tunewise.phases.source import LATER_PHASES, SOURCE_KEYS, inherit
from tunewise.report.html import label_defaults, write_html
from tunewise.atomic import disk_full_error, is_disk_full, summary_name, write_summary_files, write_text_atomic
from tunewise.study.storage import for_kernel

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PRESETS = Path(__file__).resolve().parents[2] / "params"
# The folder reads as the pipeline: each phase's notebook is numbered by its place in it.
NOTEBOOK_FILES = config.NOTEBOOK_FILES  # phase -> its notebook, in pipeline order


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
    storage_lost: bool = False  # the study's storage was lost mid-run (the CLI exits 3)
    extra: dict = field(default_factory=dict)


def notebook_for(phase: str) -> Path:
    if phase not in P.PHASES:
        raise ConfigError(f"phase: {phase!r} is not a phase; allowed: {', '.join(P.PHASES)}")
    path = NOTEBOOKS / NOTEBOOK_FILES[phase]
    if not path.is_file():
        raise ConfigError(f"phase: notebook {path} is missing from this install")
    return path


# What `tunewise run` and `pipeline` set themselves: never the user's word on data or settings.
_RUN_KEYS = ("phase", "interactive", "run_dir", "storage", "study_name", "source_study")


def phase_params(phase: str, file: str | Path | None, overrides: dict[str, Any],
                 inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """The phase's parameters, layered: DEFAULTS, the phase's preset (params/PHASE.yaml),
    ``inherited``, the user's params file, then ``overrides`` (--set); every key and value
    checked before anything runs. A file never drops a preset's setting it does not name.

    The later phases (focused, validate) take the data and fixed training settings the user
    did not give from the study they build on (phases/source.py), and refuse a given one
    that contradicts it unless ``new_study``; ``inherited`` does the same before that study
    exists (the pipeline passes its quick phase's)."""
    preset = PRESETS / f"{phase}.yaml"
    user = P.read_params_file(file) if file is not None else {}
    values = {**(P.read_params_file(preset) if preset.is_file() else {}), **(inherited or {}), **user, **overrides,
              "phase": phase, "interactive": False}
    p = P.resolve(None, values)
    if phase in LATER_PHASES:
        explicit = {*user, *overrides} - set(_RUN_KEYS)
        p = inherit(p, phase, explicit)
    return p


def precheck(phase: str, p: dict[str, Any]) -> None:
    """The checks that need no kernel: search space, sampler, pruner, stop rules, dataset,
    model and workers, and whether the study may be resumed with these settings, so bad or
    refused input fails before a kernel starts and writes nothing (the notebook checks the rest)."""
    if phase in ("quick", "focused", "validate"):
        from tunewise.phases.tuning import check, check_resume

        checked = check(p)
        if phase == "quick":
            # The focused study searches a space narrowed in its kernel: checked there.
            check_resume(p, checked)
    if phase == "final":
        from tunewise.phases.final import check as check_final

        check_final(p)  # the params file to train exists and holds valid parameters
    if phase in ("quick", "focused") and p["workers"] > 1:
        from tunewise.study.workers import plan_workers

        plan_workers(p.study, p["workers"], p["gpus"] or None)  # GPUs that exist, not asked of the CPU


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
        from tunewise.study.storage import load_if_exists, open_storage

        try:
            if self._study is None:
                storage = open_storage(self._p["storage"], self._p["run_dir"], must_exist=True)
                self._study = load_if_exists(storage, self._p["study_name"])
                if self._study is None:
                    return
            self._printer(self._study)
        except Exception:  # not there yet, or unreadable for a moment: the next poll tries again
            pass


# A study that stopped for one of these did not do its job: the run failed.
FAILED_STOPS = ("failure_guard", "setup error", "error")


def kernel_manager_class(env: dict[str, str], ipc_dir: str | None):
    """The kernel manager papermill's client builds: the kernel gets ``env`` on top of this
    process's environment (a storage URL with its password travels there, never in the
    notebook), and talks over IPC, Unix sockets in the private folder ``ipc_dir``, instead
    of local TCP ports any user of the machine could reach (which is why ipykernel warns
    "Kernel is running over TCP without encryption"). ``ipc_dir`` None: TCP."""
    from jupyter_client.manager import AsyncKernelManager

    class TunewiseKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            if ipc_dir is not None:
                kwargs.update(transport="ipc", ip=str(Path(ipc_dir) / "kernel"))
            super().__init__(**kwargs)

        async def _async_pre_start_kernel(self, **kwargs):
            kwargs["env"] = {**kwargs.get("env", os.environ), **env}
            return await super()._async_pre_start_kernel(**kwargs)

    return TunewiseKernelManager


def ipc_available() -> bool:
    """ZeroMQ's ipc transport needs Unix domain sockets (not on Windows)."""
    import zmq

    return os.name == "posix" and bool(zmq.has("ipc"))


def run_phase(phase: str, p: dict[str, Any], *, log_output: bool = False, progress: bool = False) -> PhaseRun:
    """Execute the phase notebook with parameters `p` into p['run_dir']; with `progress`,
    print the study's progress while it runs (quick and focused).

    A failed run (a cell error, or a study stopped by the failure guard or a setup error)
    never replaces the last good report: its notebook and page go beside it as
    PHASE.failed.ipynb / PHASE.failed.html (as PHASE.ipynb / .html when there is no good one),
    its summary as summary-PHASE.failed.json, and the summaries are put back as they were."""
    notebook = notebook_for(phase)
    precheck(phase, p)
    out = Path(p["run_dir"])
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{phase}.ipynb"
    failed_nb = out / f"{phase}.failed.ipynb"
    partial = out / f".{phase}.partial.ipynb"  # papermill rewrites its output as it goes
    phase_summary, latest_summary = out / summary_name(phase), out / "summary.json"
    failed_summary = out / f"summary-{phase}.failed.json"
    phase_before = phase_summary.read_bytes() if phase_summary.exists() else None
    latest_before = latest_summary.read_bytes() if latest_summary.exists() else None
    keep_previous = final.exists() and not _has_error(final)
    start = time.perf_counter()
    error = ""
    storage_lost = False
    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    # Every tunewise parameter is injected (the notebook picks what it uses), so papermill's
    # "unknown parameter" warnings would only be noise.
    papermill_log.setLevel(logging.ERROR)
    watch = StudyWatch(phase, p) if progress and phase in ("quick", "focused") else nullcontext()
    # papermill writes every parameter into the notebook (a cell and its metadata): a
    # storage password goes to the kernel's environment, the notebook names the variable.
    storage, kernel_env = for_kernel(p["storage"])
    injected = P.replace(p, storage=storage)
    ipc_dir = tempfile.mkdtemp(prefix="tw-kernel-") if ipc_available() else None
    try:
        with watch:
            pm.execute_notebook(
                str(notebook), str(partial), parameters=dict(injected), cwd=os.getcwd(), kernel_name="python3",
                progress_bar=False, log_output=log_output, request_save_on_cell_execute=False,
                kernel_manager_class=kernel_manager_class(kernel_env, ipc_dir),
            )
    except pm.PapermillExecutionError as exc:
        error = _error_lines(exc)
        storage_lost = exc.ename == "StorageLost"
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        partial.unlink(missing_ok=True)  # papermill may have left half a notebook there
        raise disk_full_error(final, exc) from None
    finally:
        papermill_log.setLevel(level)
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)
        if partial.exists():
            label_defaults(partial)
    wall = time.perf_counter() - start
    phase_after = phase_summary.read_bytes() if phase_summary.exists() else None
    summary = json.loads(phase_after) if phase_after is not None and phase_after != phase_before else None
    if not error and summary and summary.get("stop_reason") in FAILED_STOPS:
        message = (summary.get("stop_details") or {}).get("message", "")
        error = f"study {summary.get('study_name')} stopped on {summary['stop_reason']}: {message}".strip()
    written = (failed_nb if error and keep_previous else final)
    if partial.exists():
        os.replace(partial, written)
    html_path = write_html(written, written.with_suffix(".html")) if written.exists() else None
    if error:
        if phase_after != phase_before:  # the failed run's summary goes beside the good one
            if phase_after is not None:
                write_text_atomic(failed_summary, phase_after.decode())
            _put_back(phase_summary, phase_before)
            _put_back(latest_summary, latest_before)
        summary = None
    else:
        for stale in (failed_nb, failed_nb.with_suffix(".html"), failed_summary):
            stale.unlink(missing_ok=True)  # an earlier failure this run has put right
    if summary is not None:
        summary["notebook_wall_s"] = round(wall, 2)
        write_summary_files(out, phase, summary)
    return PhaseRun(phase, not error, written, html_path, summary, wall, error, skipped=bool(summary and summary.get("skipped")),
                    storage_lost=storage_lost)


def _put_back(path: Path, content: bytes | None) -> None:
    """``path`` as it was before the run: its old bytes, or no file."""
    if content is None:
        path.unlink(missing_ok=True)
    else:
        write_text_atomic(path, content.decode())


def _has_error(notebook: Path) -> bool:
    """Whether an executed notebook shows an error (a failed run's, not a good report)."""
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError):
        return True
    return any(o.get("output_type") == "error" for c in cells for o in c.get("outputs", []))


def pipeline(file: str | Path | None, overrides: dict[str, Any], out: Path, *, progress: bool = False) -> list[PhaseRun]:
    """quick, then focused (whose notebook shows the gate and skips its search when the
    quick gain was not worth it), then validate, then final (the winner retrained, exported
    and scored once on the test split), then post-mortem; one run folder with
    a sub-folder per phase, one shared study storage, and an index page."""
    out = Path(out)
    from tunewise.study.storage import JOURNAL_NAME

    storage = overrides.get("storage") or str(out / JOURNAL_NAME)
    # One storage holds every phase's study: name them apart (the user's name as a prefix).
    named = "study_name" in overrides or (file is not None and "study_name" in P.read_params_file(file))
    prefix = P.resolve(file, overrides)["study_name"] + "-" if named else ""
    names = {ph: prefix + ph for ph in P.PHASES}
    per_phase = {
        "quick": {},
        "focused": {"source_study": names["quick"]},
        "validate": {"source_study": ""},  # the latest study with complete trials
        # validation's params file, written in its run folder
        "final": {"final_params": str(out / "validate" / P.resolve(file, overrides)["params_out"])},
        "postmortem": {"studies": []},  # every study in the storage
    }
    runs: list[PhaseRun] = []
    all_params: list[dict[str, Any]] = []
    for ph in P.PHASES:
        # The later phases build on the quick study, not yet there: take its data and settings.
        inherited = {k: all_params[0][k] for k in SOURCE_KEYS} if ph in LATER_PHASES else None
        all_params.append(phase_params(ph, file, {**overrides, **per_phase[ph], "study_name": names[ph],
                                                  "run_dir": str(out / ph), "storage": storage}, inherited))
    for phase, p in zip(P.PHASES, all_params):
        if phase != "final":  # final's input is the params file validate is about to write
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
    from tunewise.report.tables import html_table

    rows = [{
        "phase": f'<a href="{r.phase}/{r.html.name}">{r.phase}</a>' if r.html else html.escape(r.phase),
        "status": "failed" if not r.ok else ("skipped search" if r.skipped else "done"),
        "result": str((r.summary or {}).get("headline", "")),
        "time": units.duration(r.wall_s),
        "notebook": f'<a href="{r.phase}/{r.notebook.name}">{html.escape(r.notebook.name)}</a>' if r.notebook.exists() else "",
    } for r in runs]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tunewise run</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 12px;text-align:left}</style></head>"
        f"<body><h1>tunewise run: {html.escape(out.name)}</h1>{html_table(rows, raw=['phase', 'notebook'])}</body></html>"
    )
    return write_text_atomic(out / "index.html", page)



