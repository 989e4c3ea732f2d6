"""Several workers on one study: one process per GPU or CPU slot, other machines joining,
and independent studies merged afterwards.

- ``run_workers(p, n, gpus)``: prepares the study once (bad input fails before any worker
  starts; the baseline is queued once), starts ``n`` worker processes on it, each pinned to
  its GPU with ``CUDA_VISIBLE_DEVICES`` or, on CPU, given its share of the cores as threads,
  watches the study (``progress(study)`` for a live view) and returns the study-wide summary.
  Together the workers finish exactly ``n_trials`` (see runner.py). A worker that fails is
  reported with the end of its log and the others go on; Ctrl-C stops them all cleanly.
- ``join_study(name, storage)``: what each worker runs, and what ``tunewise worker`` runs on
  another machine: it reads the parameters the study was prepared with
  (``tunewise.params``), rebuilds the data and objective, and runs trials until the study's
  budget is met.
- ``merge_studies(sources, target, storage)``: the other way to use several GPUs, one study
  each, merged afterwards for the post-mortem: finished trials are copied with their origin
  (``tunewise.origin``); copying the same trial twice is skipped, so a merge can be re-run.

Worker logs and results go to ``<run_dir>/workers/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import check_distribution_compatibility
from optuna.trial import FrozenTrial, TrialState

from tunewise import params as P
from tunewise.atomic import write_json_atomic, write_summary_files
from tunewise.errors import ConfigError, TunewiseError
from tunewise.study.runner import INTERRUPTED, STOP_DETAILS_KEY, STOP_REASON_KEY, RunResult, best_trial, study_result
from tunewise.search.samplers import describe_sampler, make_sampler
from tunewise.study.storage import ENV_VAR, JOURNAL_NAME, StorageLost, expand_env, location, open_storage
from tunewise.study.identity import (
    ELAPSED_KEY,
    FINISHED_STATES,
    IDENTITY_KEY,
    PARAMS_KEY,
    WORKER_KEY,
    StudyClock,
    finished_trials,
    recorded_params,
)

ORIGIN_KEY = "tunewise.origin"  # on a merged trial: {study, storage, number, datetime_start}
MERGED_KEY = "tunewise.merged_from"  # on a merged study: one entry per merge
MERGED_ELAPSED_KEY = "tunewise.merged_elapsed_s"  # seconds spent, per source study
MERGE_CHECKED = ("metric", "data_fingerprint")  # besides the direction
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STOP_GRACE_S = 30.0  # after Ctrl-C, how long workers get to leave the study consistent
EXIT_STORAGE_LOST = 3
_LOG_TAIL_LINES = 15

_log = logging.getLogger(__name__)


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpu: int | None  # index among this process's visible GPUs; None: CPU
    threads: int  # CPU threads for torch / OpenMP


def plan_workers(p: dict[str, Any], n_workers: int, gpus: list[int] | None = None,
                 threads: int | None = None) -> list[WorkerPlan]:
    """Which GPU and how many CPU threads each worker gets; ConfigError for bad input.

    GPUs go round-robin (more workers than GPUs share them). Without ``gpus``, workers use
    every visible GPU when the device is auto/cuda and CUDA is there, else the CPU. The
    cores are split evenly between workers, at least one thread each, unless ``threads``.
    """
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ConfigError(f"workers: {n_workers!r} is not allowed; allowed: an integer >= 1")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads: {threads!r} is not allowed; allowed: an integer >= 1, or none "
                          "for the cores split evenly between workers")
    device = str(p["device"])
    if gpus is not None:
        if device == "cpu":
            raise ConfigError("gpus: given with device 'cpu'; allowed: device auto or cuda, or no --gpus")
        if (not gpus or len(set(gpus)) != len(gpus)
                or any(not isinstance(g, int) or isinstance(g, bool) or g < 0 for g in gpus)):
            raise ConfigError(f"gpus: {gpus!r} is not allowed; allowed: distinct GPU indices such as 0,1")
        available = _gpu_count()
        missing = [g for g in gpus if g >= available]
        if missing:
            raise ConfigError(f"gpus: GPU {missing[0]} does not exist; this machine shows {available} "
                              f"GPU(s){f' (0-{available - 1})' if available else ''}")
    else:
        gpus = _default_gpus(device)
    threads = threads or max(1, _cores() // n_workers)
    return [WorkerPlan(i, gpus[i % len(gpus)] if gpus else None, threads) for i in range(n_workers)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _default_gpus(device: str) -> list[int]:
    if device == "cpu":
        return []
    if device.startswith("cuda:"):
        return [int(device.split(":", 1)[1])]
    return list(range(_gpu_count()))


def _cuda_visible(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES value for this process's GPU ``gpu`` (it may see a subset)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return visible.split(",")[gpu].strip()
    return str(gpu)


# --- several workers on one machine --------------------------------------------------------


@dataclass
class _Worker:
    plan: WorkerPlan
    proc: subprocess.Popen
    log: Path
    result: Path
    reported: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


def run_workers(
    p: dict[str, Any],
    n_workers: int,
    gpus: list[int] | None = None,
    *,
    progress: Callable[[optuna.Study], None] | None = None,
    threads: int | None = None,
    poll_s: float = 1.0,
    stop_grace_s: float = STOP_GRACE_S,
    prep=None,
    baseline: float | None = None,
) -> dict[str, Any]:
    """Run the phase's study with ``n_workers`` processes; returns the study-wide summary
    (tuning.tune's, plus ``workers``: one entry per worker), also written to summary.json.

    ``progress(study)`` is called every ``poll_s`` seconds while the workers run;
    ``threads``: CPU threads per worker (default: the cores split evenly). Ctrl-C
    sends each worker one SIGINT (its trial is failed and queued again), waits up to
    ``stop_grace_s`` and returns the summary with ``interrupted`` true. ``prep`` reuses
    an earlier ``tuning.prepare(p)``; ``baseline`` is as in ``tuning.tune``.
    """
    from tunewise.phases import tuning

    plans = plan_workers(p, n_workers, gpus, threads)
    prep = prep or tuning.prepare(p)
    study = prep.study
    tuning.start_new_study(prep)
    clock = StudyClock(study)
    workers: list[_Worker] = []
    interrupted = False
    if finished_trials(study) < p["n_trials"]:
        log_dir = prep.run_dir / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for plan in plans:
                workers.append(_spawn(p, study.study_name, plan, log_dir))
            _watch(workers, study, progress, poll_s)
        except KeyboardInterrupt:
            interrupted = True
            _stop_all(workers, stop_grace_s)
        except StorageLost:
            _wait_all(workers, stop_grace_s)  # they lose it too, and stop
            raise
        except BaseException:
            _stop_all(workers, stop_grace_s)  # an error here: leave the study consistent
            raise
        finally:
            _kill_all(workers)  # whatever did not stop in time
    described = [_describe(w, study) for w in workers]
    result = _study_result(study, workers, clock, p["n_trials"], interrupted,
                           ran=sum(d["trials_run"] for d in described))
    summary = tuning.summarize(prep, result, baseline)
    summary["workers"] = described
    write_summary_files(prep.run_dir, p["phase"], summary)
    return summary


def _spawn(p: dict[str, Any], study_name: str, plan: WorkerPlan, log_dir: Path) -> _Worker:
    log = log_dir / f"worker-{plan.index}.log"
    result = log_dir / f"worker-{plan.index}.json"
    result.unlink(missing_ok=True)
    run_dir = str(Path(p["run_dir"]).resolve())
    overrides = {"run_dir": run_dir, "workers": 1}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The storage travels in the environment, not on the command line others can read.
    # Expanded here: the notebook's storage may be the reference ${TUNEWISE_STORAGE} itself.
    env[ENV_VAR] = expand_env(p["storage"] or os.environ.get(ENV_VAR) or str(Path(run_dir) / JOURNAL_NAME))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      os.environ.get("PYTHONPATH")]))
    env.update({name: str(plan.threads) for name in THREAD_ENV_VARS})
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = _cuda_visible(plan.gpu)
        overrides["device"] = "cuda"  # the one GPU this worker sees
    command = [sys.executable, "-m", "tunewise.study.workers", "--study", study_name,
               "--index", str(plan.index), "--threads", str(plan.threads),
               "--parent-pid", str(os.getpid()), "--result", str(result)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    with open(log, "wb") as out:
        # Its own session: a Ctrl-C in the terminal reaches this process only, which
        # forwards exactly one SIGINT, so no worker is interrupted while cleaning up.
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return _Worker(plan, proc, log, result)


def _watch(workers: list[_Worker], study: optuna.Study,
           progress: Callable[[optuna.Study], None] | None, poll_s: float) -> None:
    """Wait for every worker, reporting failures as they happen and calling ``progress``."""
    while True:
        alive = [w for w in workers if w.proc.poll() is None]
        for w in workers:
            if w.proc.returncode is not None and not w.reported:
                w.reported = True
                if w.proc.returncode != 0:
                    _log.warning("worker %d (pid %d) exited with status %d; the others go on:\n%s",
                                 w.plan.index, w.pid, w.proc.returncode, _tail(w.log))
        if progress is not None:
            try:
                progress(study)
            except (KeyboardInterrupt, StorageLost):
                raise
            except Exception as exc:  # a broken live view must not stop the study
                _log.warning("progress view failed (%s: %s); the workers go on without it",
                             type(exc).__name__, exc)
                progress = None
        if not alive:
            return
        try:
            alive[0].proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass


def _stop_all(workers: list[_Worker], grace_s: float) -> None:
    """One SIGINT each (runner.py fails and requeues the trial), then wait; a second
    Ctrl-C, or the grace period running out, kills what is left."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGINT)
    try:
        _wait_all(workers, grace_s)
    except KeyboardInterrupt:
        pass


def _wait_all(workers: list[_Worker], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            _log.warning("worker %d (pid %d) did not stop: killed; its trial is queued again "
                         "by the next run", w.plan.index, w.pid)
            w.proc.kill()
            w.proc.wait()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("  " + line for line in lines[-_LOG_TAIL_LINES:])


def _read_result(w: _Worker) -> dict[str, Any] | None:
    try:
        return json.loads(w.result.read_text())
    except (OSError, ValueError):
        return None


def _describe(w: _Worker, study: optuna.Study) -> dict[str, Any]:
    result = _read_result(w) or {}
    code = w.proc.returncode
    ran = sum(1 for t in study.get_trials(deepcopy=False)
              if isinstance(t.user_attrs.get(WORKER_KEY), dict)
              and t.user_attrs[WORKER_KEY].get("pid") == w.pid
              and t.user_attrs[WORKER_KEY].get("host") == socket.gethostname())
    return {
        "index": w.plan.index,
        "gpu": w.plan.gpu,
        "threads": w.plan.threads,
        "pid": w.pid,
        "exit_code": code,
        "trials_run": ran,
        "stop_reason": result.get("stop_reason"),
        "log": str(w.log),
        "error": None if code in (0, 130) else _tail(w.log),
    }


# Which worker's reason speaks for the study when the budget was not met.
_REASON_ORDER = ("setup error", "error", "timeout", "attempts", "stopped")


def _study_result(study: optuna.Study, workers: list[_Worker], clock: StudyClock,
                  n_trials: int, interrupted: bool, ran: int) -> RunResult:
    """The study-wide RunResult, its stop reason recorded in the study."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED_STATES for t in trials)
    results = [r for r in map(_read_result, workers) if r]
    recorded = study.user_attrs.get(STOP_REASON_KEY)
    recorded_details = study.user_attrs.get(STOP_DETAILS_KEY) or {}
    counts = f"{finished} of {n_trials} trials finished"
    if interrupted:
        reason, details = INTERRUPTED, {"message": f"Ctrl-C: workers stopped; {counts}. Interrupted "
                                                   "trials are queued for the next run."}
    elif recorded and "trial" in recorded_details and recorded not in _REASON_ORDER + (INTERRUPTED,):
        reason, details = recorded, recorded_details  # a stop rule
    elif finished >= n_trials:
        reason, details = "budget", {"finished_trials": finished, "n_trials": n_trials,
                                     "message": f"{counts} by {max(1, len(workers))} worker(s)."}
    else:
        reasons = [r["stop_reason"] for r in results if r.get("stop_reason") in _REASON_ORDER]
        if reasons:
            reason = min(reasons, key=_REASON_ORDER.index)
            first = next(r for r in results if r["stop_reason"] == reason)
            details = {**(first.get("stop_details") or {}), "finished_trials": finished}
        else:
            codes = ", ".join(f"worker {w.plan.index}: {w.proc.returncode}" for w in workers)
            reason, details = "workers failed", {"message": f"{counts}; exit statuses {codes}; "
                                                            f"see {workers[0].log.parent}"}
    study.set_user_attr(STOP_REASON_KEY, reason)
    study.set_user_attr(STOP_DETAILS_KEY, details)
    elapsed = max(clock.flush(), float(study.user_attrs.get(ELAPSED_KEY, 0.0)))
    return study_result(study, reason, details, ran=ran, elapsed_s=elapsed, run_wall_s=clock.run_wall_s(),
                        interrupted=interrupted)


class ProgressPrinter:
    """A ``progress`` for run_workers (or anything following a study) that prints one line
    whenever the study's counts change, after ``prefix``:
    ``[12/100 finished] 9 complete, 3 pruned, 1 failed, 4 running; best 0.9123 (trial 7)``."""

    def __init__(self, n_trials: int, stream=None, prefix: str = "") -> None:
        self._n_trials = n_trials
        self._stream = stream
        self._prefix = prefix
        self._last = ""

    def __call__(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        top = best_trial(study, [t for t in trials if t.state == TrialState.COMPLETE])
        best = "" if top is None else f"; best {top.values[0]:.4f} (trial {top.number})"
        line = (f"{self._prefix}[{count[TrialState.COMPLETE] + count[TrialState.PRUNED]}/{self._n_trials} finished] "
                f"{count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
                f"{count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running{best}")
        if line != self._last:
            self._last = line
            print(line, file=self._stream or sys.stdout, flush=True)


# --- one worker: joining a study -----------------------------------------------------------


def join_study(
    study_name: str,
    storage_url: str | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    threads: int | None = None,
    worker: str | int | None = None,
    parent_pid: int | None = None,
    result_path: str | Path | None = None,
    callbacks: list[Callable] | None = None,
) -> dict[str, Any]:
    """Join study ``study_name`` in ``storage_url`` (None: $TUNEWISE_STORAGE) and run trials
    until its budget is met; returns the study-wide summary (as tuning.tune).

    The parameters are those the study recorded when it was prepared, with ``overrides``
    on top (e.g. ``{"device": "cuda:1", "dataset": "/data/train"}`` on another machine).
    Data that differ from the study's are refused, as on any resume. ``threads`` caps
    torch's CPU threads; ``worker`` tags this worker for its sampler seed; a worker started
    by run_workers stops after its trial if that process (``parent_pid``) is gone.
    """
    from tunewise.phases import tuning

    if threads:
        _limit_threads(threads)
    url = storage_url or os.environ.get(ENV_VAR)
    if not url:
        raise ConfigError("worker: no storage given; allowed: --storage URL (e.g. "
                          "postgresql://USER:${PASSWORD}@HOST/DB or a .journal file) or $TUNEWISE_STORAGE")
    study = _load_study(study_name, open_storage(url, ".", must_exist=True))
    overrides = dict(overrides or {})
    # One worker, headless; the study's recorded parameters under this machine's overrides.
    p = P.resolve(overrides={**recorded_params(study), "storage": storage_url, "force": False,
                             "interactive": False, **overrides, "workers": 1})
    prep = tuning.prepare(p, record=False)  # the study's parameters stay the starter's
    prep.study.sampler = _worker_sampler(p, prep.study, worker)
    extra = list(callbacks or [])
    if parent_pid:
        extra.append(_ParentWatch(parent_pid))
    summary = tuning.tune(p, prep=prep, callbacks=extra)
    if result_path:
        write_json_atomic(result_path, summary)
    return summary


def _limit_threads(threads: int) -> None:
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _load_study(name: str, storage) -> optuna.Study:
    names = optuna.get_all_study_names(storage)
    if name not in names:
        from tunewise.errors import did_you_mean

        raise ConfigError(f"study {name!r} is not in storage {location(storage)}{did_you_mean(name, names)}; "
                          f"allowed: {', '.join(sorted(names)) or 'none there yet'}")
    return optuna.load_study(study_name=name, storage=storage)


def _worker_sampler(p: dict[str, Any], study: optuna.Study, worker: str | int | None):
    """The sampler with a seed of this worker's own: workers that share a seed propose the
    same random trials. Still reproducible for a given worker tag and study size."""
    spec = describe_sampler(p["sampler"])
    base = spec.get("seed", p["seed"])
    if base is None:
        return study.sampler  # unseeded: each process draws its own
    tag = worker if worker is not None else f"{socket.gethostname()}:{os.getpid()}"
    digest = hashlib.blake2b(f"{base}:{len(study.trials)}:{tag}".encode(), digest_size=4).digest()
    seed = int.from_bytes(digest, "big") & 0x7FFFFFFF
    if "seed" in spec:
        spec["seed"] = seed
    return make_sampler(spec, seed=seed)


class _ParentWatch:
    """Stops a worker after its trial once the run_workers process that started it is gone."""

    def __init__(self, parent_pid: int) -> None:
        self._parent_pid = parent_pid

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if os.getppid() != self._parent_pid:
            _log.warning("the process that started this worker is gone: stopping")
            study.stop()


# --- merging independent studies -----------------------------------------------------------


def merge_studies(
    sources: list[tuple[str, str]],
    target_name: str,
    target_storage: str,
    *,
    include_failed: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Copy the finished (COMPLETE, PRUNED; with ``include_failed`` also FAIL) trials of
    each ``(study name, storage)`` into study ``target_name`` (created if needed).

    Each copy keeps its parameters, distributions, value, intermediate values, times and
    user attrs, plus ``tunewise.origin`` (the first study it came from). A trial whose
    origin, parameters and value are already in the target is skipped, so merging again
    copies nothing twice. Studies with opposite directions are refused; a different metric
    or dataset is refused unless ``force``. Returns the counts.
    """
    if not sources:
        raise ConfigError("merge: no source studies; allowed: one or more (study name, storage) pairs")
    loaded = []
    for name, url in sources:
        if not url:
            raise ConfigError(f"merge: no storage given for study {name!r}; allowed: a storage URL or .journal file")
        loaded.append(_load_study(name, open_storage(url, ".", must_exist=True)))
    if not target_storage:
        raise ConfigError("merge: no target storage; allowed: a storage URL or .journal file")
    storage = open_storage(target_storage, ".")
    existing = target_name in optuna.get_all_study_names(storage)
    target = optuna.load_study(study_name=target_name, storage=storage) if existing else None
    differences = _check_mergeable(loaded, target, force)
    present = target.get_trials(deepcopy=False) if target is not None else []
    seen = {_key(_origin_of(t, target), t) for t in present}
    states = (*FINISHED_STATES, TrialState.FAIL) if include_failed else FINISHED_STATES
    per_source, to_copy = [], []
    for index, source in enumerate(loaded):
        counts = {"study": source.study_name, "storage": location(source._storage),
                  "copied": 0, "duplicates": 0, "not_copied": {}}
        for t in source.get_trials(deepcopy=False):
            if t.state not in states:
                state = t.state.name.lower()
                counts["not_copied"][state] = counts["not_copied"].get(state, 0) + 1
                continue
            origin = _origin_of(t, source)
            key = _key(origin, t)
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            counts["copied"] += 1
            to_copy.append((t.datetime_start or datetime.min, index, t.number, _copy(t, origin)))
        per_source.append(counts)
    to_copy.sort(key=lambda item: item[:3])  # interleaved in time, as the trials ran
    copies = [item[3] for item in to_copy]
    _check_distributions([*present, *copies])  # before anything is written
    if target is None:
        target = optuna.create_study(study_name=target_name, storage=storage, direction=loaded[0].direction)
    target.add_trials(copies)
    _record_merge(target, loaded, per_source, differences)
    return {
        "target": target_name,
        "storage": location(target._storage),
        "copied": len(copies),
        "duplicates": sum(c["duplicates"] for c in per_source),
        "sources": per_source,
        "n_trials": len(target.get_trials(deepcopy=False)),
        "forced": differences,
    }


def _identity(study: optuna.Study) -> dict[str, Any]:
    return study.user_attrs.get(IDENTITY_KEY) or {}


def _label(study: optuna.Study) -> str:
    return f"{study.study_name}@{location(study._storage)}"


def _check_mergeable(sources: list[optuna.Study], target: optuna.Study | None,
                     force: bool) -> dict[str, dict[str, Any]]:
    """Refuse opposite directions always, other metrics or data unless ``force``; returns
    the differences that ``force`` let through."""
    studies = ([target] if target is not None else []) + sources
    directions = {_label(s): s.direction.name.lower() for s in studies}
    if len(set(directions.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in directions.items())
        raise ConfigError(f"merge: the studies optimize in opposite directions ({listed}); their "
                          "values cannot share one study, even with force")
    differences = {}
    for field in MERGE_CHECKED:
        values = {_label(s): _identity(s).get(field) for s in studies}
        if len(set(map(str, values.values()))) > 1:
            differences[field] = values
    if differences and not force:
        lines = "\n".join(f"  {field}: " + ", ".join(f"{k}={v!r}" for k, v in values.items())
                          for field, values in differences.items())
        raise ConfigError(f"merge: the studies are not comparable:\n{lines}\n"
                          "To merge anyway pass force=True (CLI: --force).")
    return differences


def _origin_of(trial: FrozenTrial, study: optuna.Study) -> dict[str, Any]:
    """Where ``trial`` first ran: its recorded origin if it was merged before, else here."""
    origin = trial.user_attrs.get(ORIGIN_KEY)
    if isinstance(origin, dict):
        return origin
    start = trial.datetime_start.isoformat() if trial.datetime_start else None
    return {"study": study.study_name, "storage": location(study._storage),
            "number": trial.number, "datetime_start": start}


def _key(origin: dict[str, Any], trial: FrozenTrial) -> tuple:
    # The storage is left out: a journal file that moved still holds the same trials; the
    # start time tells apart same-named studies in different storages.
    params = json.dumps(trial.params, sort_keys=True, default=str)
    return (origin.get("study"), origin.get("number"), origin.get("datetime_start"), params,
            json.dumps(trial.values))


def _copy(trial: FrozenTrial, origin: dict[str, Any]) -> FrozenTrial:
    system_attrs = {k: v for k, v in trial.system_attrs.items()
                    if k not in ("fixed_params", "failed_trial", "retry_history")}  # about the source's numbering
    return FrozenTrial(
        number=0,  # given by the target
        state=trial.state,
        value=None,
        values=trial.values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        user_attrs={**trial.user_attrs, ORIGIN_KEY: origin},
        system_attrs=system_attrs,
        intermediate_values=dict(trial.intermediate_values),
        trial_id=0,
    )


def _check_distributions(trials: list[FrozenTrial]) -> None:
    """A parameter must keep one kind of distribution (and one set of choices) in a study."""
    seen: dict[str, Any] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in seen:
                try:
                    check_distribution_compatibility(seen[name], dist)
                except ValueError:
                    raise ConfigError(f"merge: parameter {name!r} is {seen[name]} in one study and {dist} "
                                      "in another; allowed: the same kind of distribution and the same "
                                      "choices") from None
            else:
                seen[name] = dist


def _record_merge(target: optuna.Study, sources: list[optuna.Study], per_source: list[dict],
                  differences: dict) -> None:
    attrs = target.user_attrs
    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sources": per_source,
             "forced": differences}
    target.set_user_attr(MERGED_KEY, [*attrs.get(MERGED_KEY, []), entry])
    # Time spent: the sum over the studies merged (each counted once, however often merged),
    # so gain per hour is per hour of compute, as if the studies had run one after another.
    elapsed = dict(attrs.get(MERGED_ELAPSED_KEY) or {})
    if not elapsed and attrs.get(ELAPSED_KEY) is not None:
        elapsed[_label(target)] = float(attrs[ELAPSED_KEY])  # the target's own runs, if any
    for source in sources:
        if source.user_attrs.get(ELAPSED_KEY) is not None:
            elapsed[_label(source)] = float(source.user_attrs[ELAPSED_KEY])
    target.set_user_attr(MERGED_ELAPSED_KEY, elapsed)
    if elapsed:
        target.set_user_attr(ELAPSED_KEY, round(sum(elapsed.values()), 3))
    if IDENTITY_KEY not in attrs:
        identities = [_identity(s) for s in sources]
        keys = dict.fromkeys(k for i in identities for k in i)
        merged = {k: (identities[0].get(k) if len({json.dumps(i.get(k)) for i in identities}) == 1
                      else "mixed") for k in keys}
        target.set_user_attr(IDENTITY_KEY, merged)
    if PARAMS_KEY not in attrs and PARAMS_KEY in sources[0].user_attrs:
        target.set_user_attr(PARAMS_KEY, sources[0].user_attrs[PARAMS_KEY])
    names = ", ".join(_label(s) for s in sources)
    target.set_user_attr(STOP_REASON_KEY, "merged")
    target.set_user_attr(STOP_DETAILS_KEY, {"message": f"Merged from {names}.",
                                            "copied": sum(c["copied"] for c in per_source)})


# --- the worker process --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tunewise.workers",
                                 description="One tunewise worker (started by run_workers).")
    ap.add_argument("--study", required=True)
    ap.add_argument("--storage", help="default: $TUNEWISE_STORAGE")
    ap.add_argument("--index", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--result")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = join_study(args.study, args.storage, overrides=P.parse_set(args.overrides),
                             threads=args.threads, worker=args.index, parent_pid=args.parent_pid,
                             result_path=args.result)
    except StorageLost as exc:
        print(f"tunewise: error: {exc}", file=sys.stderr)
        return EXIT_STORAGE_LOST
    except TunewiseError as exc:
        print(f"tunewise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
