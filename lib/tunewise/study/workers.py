"""The process plumbing under several workers on one study.

- ``plan_workers``: which GPU and how many CPU threads each worker gets.
- ``run_worker_processes``: starts one worker process per plan on a prepared study (each
  pinned to its GPU with ``CUDA_VISIBLE_DEVICES`` or, on CPU, given its share of the cores),
  watches them, stops them cleanly on Ctrl-C and returns the study-wide result. A worker
  that fails is reported with the end of its log and the others go on.
- What a worker process needs: ``limit_threads``, ``worker_sampler`` (a seed of its own),
  ``ParentWatch`` (stop when the starter is gone), ``ProgressPrinter``.

Preparing the study and joining it (``run_workers``, ``join_study``, the worker's
``python -m`` entry point) is the phase's business: phases/workers.py. The other way to
use several GPUs, one study each merged afterwards, is merge.py.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunewise.errors import ConfigError, is_int
from tunewise.records import (
    ELAPSED_KEY,
    FINISHED_STATES,
    STOP_DETAILS_KEY,
    STOP_REASON_KEY,
    WORKER_KEY,
    best_trial,
)
from tunewise.search.samplers import describe_sampler, make_sampler
from tunewise.study.budget import StudyClock, finished_trials
from tunewise.study.runner import INTERRUPTED, RunResult, nothing_to_do, study_result
from tunewise.study.settings import StudySettings
from tunewise.study.storage import (
    ENV_VAR,
    JOURNAL_NAME,
    StorageLost,
    expand_env,
    lost_heartbeats,
)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STOP_GRACE_S = 30.0  # after Ctrl-C, how long workers get to leave the study consistent
_LOG_TAIL_LINES = 15

_log = logging.getLogger(__name__)


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpu: int | None  # index among this process's visible GPUs; None: CPU
    threads: int  # CPU threads for torch / OpenMP


def plan_workers(settings: StudySettings, n_workers: int, gpus: list[int] | None = None,
                 threads: int | None = None) -> list[WorkerPlan]:
    """Which GPU and how many CPU threads each worker gets; ConfigError for bad input.

    GPUs go round-robin (more workers than GPUs share them). Without ``gpus``, workers use
    every visible GPU when the device is auto/cuda and CUDA is there, else the CPU. The
    cores are split evenly between workers, at least one thread each, unless ``threads``.
    """
    if not is_int(n_workers) or n_workers < 1:
        raise ConfigError(f"workers: {n_workers!r} is not allowed; allowed: an integer >= 1")
    if threads is not None and (not is_int(threads) or threads < 1):
        raise ConfigError(f"threads: {threads!r} is not allowed; allowed: an integer >= 1, or none "
                          "for the cores split evenly between workers")
    device = str(settings.device)
    if gpus is not None:
        if device == "cpu":
            raise ConfigError("gpus: given with device 'cpu'; allowed: device auto or cuda, or no --gpus")
        if (not gpus or len(set(gpus)) != len(gpus)
                or any(not is_int(g) or g < 0 for g in gpus)):
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


def run_worker_processes(
    settings: StudySettings,
    study: optuna.Study,
    plans: list[WorkerPlan],
    log_dir: Path,
    module: str,
    *,
    progress: Callable[[optuna.Study], None] | None = None,
    poll_s: float = 1.0,
    stop_grace_s: float = STOP_GRACE_S,
    overrides: dict[str, Any] | None = None,
) -> tuple[RunResult, list[dict[str, Any]]]:
    """Start one ``python -m module`` process per plan on ``study`` (already prepared), wait
    for them and return (the study-wide RunResult, one description per worker).

    ``progress(study)`` is called every ``poll_s`` seconds while they run. Ctrl-C sends each
    worker one SIGINT (its trial is failed and queued again), waits up to ``stop_grace_s``
    and returns a result with ``interrupted`` true. ``overrides``: parameters each worker
    takes over the study's recorded ones (this machine's settings).
    """
    clock = StudyClock(study)
    workers: list[_Worker] = []
    interrupted = False
    if finished_trials(study) < settings.n_trials:
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for plan in plans:
                workers.append(_spawn(settings, study.study_name, plan, log_dir, module, overrides))
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
    if not workers:  # the budget was spent already: nothing ran, nothing is rewritten
        return nothing_to_do(study, settings.n_trials, settings.timeout, clock.run_wall_s()), described
    result = _study_result(study, workers, clock, settings.n_trials, interrupted,
                           ran=sum(d["trials_run"] for d in described))
    return result, described


def _spawn(settings: StudySettings, study_name: str, plan: WorkerPlan, log_dir: Path, module: str,
           extra: dict[str, Any] | None = None) -> _Worker:
    log = log_dir / f"worker-{plan.index}.log"
    result = log_dir / f"worker-{plan.index}.json"
    result.unlink(missing_ok=True)
    run_dir = str(Path(settings.run_dir).resolve())
    overrides = {**(extra or {}), "run_dir": run_dir, "workers": 1}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The storage travels in the environment, not on the command line others can read.
    # Expanded here: the notebook's storage may be the reference ${TUNEWISE_STORAGE} itself.
    env[ENV_VAR] = expand_env(settings.storage or os.environ.get(ENV_VAR) or str(Path(run_dir) / JOURNAL_NAME))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      os.environ.get("PYTHONPATH")]))
    env.update({name: str(plan.threads) for name in THREAD_ENV_VARS})
    if plan.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = _cuda_visible(plan.gpu)
        overrides["device"] = "cuda"  # the one GPU this worker sees
    command = [sys.executable, "-m", module, "--study", study_name,
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
        "host": socket.gethostname(),
        "pid": w.pid,
        "exit_code": code,
        "trials_run": ran,
        "stop_reason": result.get("stop_reason"),
        "log": str(w.log),
        "error": None if code in (0, 130) else _tail(w.log),
    }


def trial_workers(study: optuna.Study) -> list[dict[str, Any]]:
    """Every worker that ran a trial of ``study``, on any machine, read from the storage
    (each trial's ``tunewise.worker``): host, pid and trials run, in order of first trial."""
    seen: dict[tuple, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        w = t.user_attrs.get(WORKER_KEY)
        if not isinstance(w, dict) or w.get("trial") != t.number:
            continue  # never claimed, or a record copied into a retried trial
        key = (w.get("host"), w.get("pidns"), w.get("pid"), w.get("started"))
        entry = seen.setdefault(key, {"host": w.get("host"), "pid": w.get("pid"), "trials_run": 0})
        entry["trials_run"] += 1
    return list(seen.values())


def other_workers(study: optuna.Study, described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``trial_workers`` that are not among ``described`` (the worker processes this
    command started): workers that joined from elsewhere, or ran an earlier run. Shaped as
    ``described``'s entries, with what only their own machine knows left None."""
    mine = {(d.get("host", socket.gethostname()), d["pid"]) for d in described}
    return [{"index": None, "gpu": None, "threads": None, "host": w["host"], "pid": w["pid"], "exit_code": None,
             "trials_run": w["trials_run"], "stop_reason": None, "log": None, "error": None}
            for w in trial_workers(study) if (w["host"], w["pid"]) not in mine]


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
                                     "message": f"{counts} by {max(1, len(trial_workers(study)))} worker(s)."}
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
        self._lost: dict[int, float] = {}  # trial number -> seconds left when first seen silent

    def __call__(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        top = best_trial(study, [t for t in trials if t.state == TrialState.COMPLETE])
        best = "" if top is None else f"; best {top.values[0]:.4f} (trial {top.number})"
        line = (f"{self._prefix}[{count[TrialState.COMPLETE] + count[TrialState.PRUNED]}/{self._n_trials} finished] "
                f"{count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
                f"{count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running"
                f"{self._heartbeat_note(study) if count[TrialState.RUNNING] else ''}{best}")
        if line != self._last:
            self._last = line
            print(line, file=self._stream or sys.stdout, flush=True)

    def _heartbeat_note(self, study: optuna.Study) -> str:
        """Why a trial still counts as running though its worker is gone: `` (1 waiting up
        to 115 s for a lost worker's heartbeat)``; the figure as first seen, so the line is
        printed once, not at every tick of a countdown."""
        lost = lost_heartbeats(study)
        self._lost = {n: self._lost.get(n, left) for n, left in lost.items()}
        if not lost:
            return ""
        return (f" ({len(lost)} waiting up to {max(self._lost.values()):.0f} s for a lost worker's "
                f"heartbeat{'s' if len(lost) > 1 else ''})")


# --- one worker: joining a study -----------------------------------------------------------


def limit_threads(threads: int) -> None:
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def worker_sampler(sampler: Any, seed: int | None, study: optuna.Study, worker: str | int | None):
    """The sampler (``sampler``: its name or spec; ``seed``: the run's) with a seed of this
    worker's own: workers that share a seed propose the same random trials. Still
    reproducible for a given worker tag and study size."""
    spec = describe_sampler(sampler)
    base = spec.get("seed", seed)
    if base is None:
        return study.sampler  # unseeded: each process draws its own
    tag = worker if worker is not None else f"{socket.gethostname()}:{os.getpid()}"
    digest = hashlib.blake2b(f"{base}:{len(study.trials)}:{tag}".encode(), digest_size=4).digest()
    seed = int.from_bytes(digest, "big") & 0x7FFFFFFF
    if "seed" in spec:
        spec["seed"] = seed
    return make_sampler(spec, seed=seed)


class ParentWatch:
    """Stops a worker after its trial once the run_workers process that started it is gone."""

    def __init__(self, parent_pid: int) -> None:
        self._parent_pid = parent_pid

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if os.getppid() != self._parent_pid:
            _log.warning("the process that started this worker is gone: stopping")
            study.stop()
