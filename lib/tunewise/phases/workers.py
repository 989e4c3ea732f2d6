"""Several workers on one phase's study: the orchestration above study/workers.py.

- ``run_workers(p, n, gpus)``: prepares the study once (bad input fails before any worker
  starts; the baseline is queued once), starts ``n`` worker processes on it (this module's
  ``python -m`` entry point), optionally follows it (``progress(study)`` for a live view)
  and returns the study-wide summary. Together the workers finish exactly ``n_trials``
  (see study/runner.py); Ctrl-C stops them all cleanly.
- ``join_study(name, storage)``: what each worker runs, and what ``tunewise worker`` runs on
  another machine: it reads the parameters the study was prepared with
  (``tunewise.params``), rebuilds the data and objective, and runs trials until the study's
  budget is met.

Worker logs and results go to ``<run_dir>/workers/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
import yaml

from tunewise import config
from tunewise.atomic import write_json_atomic, write_summary_files
from tunewise.errors import (
    EXIT_BAD_INPUT,
    EXIT_STORAGE_LOST,
    ConfigError,
    TunewiseError,
)
from tunewise.records import PARAMS_KEY
from tunewise.study.identity import UNRECORDED_PARAMS, recorded_params
from tunewise.study.storage import ENV_VAR, StorageLost, load_study, open_storage
from tunewise.study.workers import (
    STOP_GRACE_S,
    ParentWatch,
    limit_threads,
    other_workers,
    plan_workers,
    run_worker_processes,
    worker_sampler,
)

if TYPE_CHECKING:
    from tunewise.phases.prepare import Prepared

WORKER_MODULE = "tunewise.phases.workers"  # what `python -m` runs in each worker process

_log = logging.getLogger(__name__)


def run_workers(
    p: dict[str, Any],
    n_workers: int,
    gpus: list[int] | None = None,
    *,
    progress: Callable[[optuna.Study], None] | None = None,
    threads: int | None = None,
    poll_s: float = 1.0,
    stop_grace_s: float = STOP_GRACE_S,
    prep: Prepared | None = None,
    baseline: float | None = None,
) -> dict[str, Any]:
    """Run the phase's study with ``n_workers`` processes; returns the study-wide summary
    (prepare.summarize's, plus ``workers``: one entry per worker), also written to summary.json.

    ``progress(study)`` is called every ``poll_s`` seconds while the workers run;
    ``threads``: CPU threads per worker (default: the cores split evenly). Ctrl-C
    sends each worker one SIGINT (its trial is failed and queued again), waits up to
    ``stop_grace_s`` and returns the summary with ``interrupted`` true. ``prep`` reuses
    an earlier ``prepare(p)``; ``baseline`` is as in ``tuning.tune``.
    """
    from tunewise.phases import prepare as phase

    p = config.as_config(p)
    plans = plan_workers(p.study, n_workers, gpus, threads)
    prep = prep or phase.prepare(p)
    phase.start_new_study(prep)
    tracker = phase.start_tracking(prep)  # the parent run, before any worker looks for it
    result, described = run_worker_processes(p.study, prep.study, plans, prep.run_dir / "workers", WORKER_MODULE,
                                             progress=progress, poll_s=poll_s, stop_grace_s=stop_grace_s,
                                             overrides=_local_settings(p, prep.study))
    summary = phase.summarize(prep, result, baseline)
    summary["workers"] = [*described, *other_workers(prep.study, described)]
    phase.finish_tracking(tracker, prep, summary)  # what a worker could not log, logged now
    write_summary_files(prep.run_dir, p["phase"], summary)
    return summary


def _local_settings(p: config.RunConfig, study: optuna.Study) -> dict[str, Any]:
    """This run's parameters that differ from the study's record: the workers it starts
    run with them (they are this machine's), while the record stays the study's."""
    recorded = study.user_attrs.get(PARAMS_KEY) or {}
    mine = json.loads(json.dumps({k: v for k, v in config.absolute_paths(p).items()
                                  if k not in (*UNRECORDED_PARAMS, "workers", "gpus")}, default=str))
    return {k: v for k, v in mine.items() if recorded.get(k, None) != v}


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
    if threads:
        limit_threads(threads)
    url = storage_url or os.environ.get(ENV_VAR)
    if not url:
        raise ConfigError("worker: no storage given; allowed: --storage URL (e.g. "
                          "postgresql://USER:${PASSWORD}@HOST/DB or a .journal file) or $TUNEWISE_STORAGE")
    study = load_study(study_name, open_storage(url, ".", must_exist=True))
    # Only now the training stack (torch, timm): a worker that cannot reach its storage
    # says so in a second.
    from tunewise.phases import prepare as phase

    overrides = dict(overrides or {})
    # One worker, headless; the study's recorded parameters under this machine's overrides.
    p = config.resolve({**recorded_params(study), "storage": storage_url, "force": False,
                        "interactive": False, **overrides, "workers": 1})
    prep = phase.prepare(p, record=False)  # the study's parameters stay the starter's
    prep.study.sampler = worker_sampler(p.study.sampler, p.train.seed, prep.study, worker)
    extra = list(callbacks or [])
    if parent_pid:
        extra.append(ParentWatch(parent_pid))
    # A worker started by run_workers reports through its result file; one that joined from
    # elsewhere writes its log and summary under names of its own, never the owner's summary.json.
    own = "" if result_path else str(Path("workers") / f"summary-{p['phase']}.{worker_name()}.json")
    log = None if result_path else _log_to(prep.run_dir / "workers" / f"{worker_name()}.log")
    try:
        summary = phase.run_here(p, prep=prep, callbacks=extra, joined=True, summary_file=own)
    finally:
        if log is not None:
            logging.getLogger("tunewise").removeHandler(log)
            log.close()
    if result_path:
        write_json_atomic(result_path, summary)
    else:
        print(f"this worker's summary: {prep.run_dir / own}; its log: {log.baseFilename}")
    return summary


def _log_to(path: Path) -> logging.Handler:
    """tunewise's log lines (retries, recovered trials, waits: what reaches the console) also to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("tunewise").addHandler(handler)
    return handler


def worker_name() -> str:
    """What names a joining worker's own files: ``worker-HOST-PID``."""
    return f"worker-{socket.gethostname()}-{os.getpid()}"


# --- the worker process --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}",
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
        summary = join_study(args.study, args.storage, overrides=_parse_set(args.overrides),
                             threads=args.threads, worker=args.index, parent_pid=args.parent_pid,
                             result_path=args.result)
    except StorageLost as exc:
        print(f"tunewise: error: {exc}", file=sys.stderr)
        return EXIT_STORAGE_LOST
    except TunewiseError as exc:
        print(f"tunewise: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return 130 if summary["interrupted"] else 0


def _parse_set(items: list[str]) -> dict[str, Any]:
    """The ``--set KEY=VALUE`` overrides, each VALUE read as YAML: run_workers writes JSON (a
    subset of YAML), and a plain path or name (typed by hand) is a YAML string."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    config.check_keys(out, "--set")
    return out


if __name__ == "__main__":
    sys.exit(main())
