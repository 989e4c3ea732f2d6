"""Trials per minute with 1 and 2 workers on one study (one CPU thread each).

Real trials: timm's tiny ``test_convnext`` trained on scikit-learn's digits at 32 px, a
fixed number of epochs, no pruning (every trial costs the same), random sampling over lr
and weight decay, the study in a journal file. Each way runs ``run_workers`` on a fresh
study of ``--trials`` trials; the dataset cache is warmed first so neither pays for it.

Two rates per row:
- while running: finished trials over the span from the first trial's start to the last
  trial's end (what the workers deliver once started);
- end to end: finished trials over the whole ``run_workers`` call, which also pays for
  preparing the study and starting worker processes (importing torch, ~3-5 s each).

    .venv/bin/python benchmarks/workers.py                  # 24 trials, 2 epochs each way
    .venv/bin/python benchmarks/workers.py --trials 12 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from tunewise import params as P  # noqa: E402
from tunewise.study.storage import open_storage  # noqa: E402
from tunewise.records import FINISHED_STATES  # noqa: E402
from tunewise.phases.workers import run_workers  # noqa: E402

SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
}


def phase_params(run_dir: Path, trials: int, epochs: int) -> dict:
    return P.resolve(overrides={
        "run_dir": str(run_dir), "dataset": "digits", "img_size": 32, "model": "test_convnext",
        "epochs": epochs, "batch_size": 64, "hflip": False, "n_trials": trials, "search_space": SPACE,
        "sampler": {"name": "random"}, "pruner": "none", "stop_rules": {"plateau": False, "failure_guard": False},
        "baseline": False, "device": "cpu", "seed": 0,
    })


def measure(root: Path, workers: int, trials: int, epochs: int) -> dict:
    run_dir = root / f"workers-{workers}"
    p = phase_params(run_dir, trials, epochs)
    start = time.perf_counter()
    summary = run_workers(p, workers, threads=1, poll_s=0.2)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=p["study_name"], storage=open_storage(None, run_dir))
    done = study.get_trials(states=FINISHED_STATES)
    assert len(done) == trials == summary["n_finished"], summary
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    trial_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done)
    return {"workers": workers, "trials": len(done), "span_s": span, "wall_s": wall, "trial_s": trial_s,
            "per_min": 60 * len(done) / span, "per_min_e2e": 60 * len(done) / wall,
            "by_worker": [w["trials_run"] for w in summary["workers"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24, help="trials per study (each way)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tunewise-bench-workers-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("TUNEWISE_CACHE_DIR", str(root / "cache"))
        from tunewise.data.cache import load_images

        load_images(P.data_spec(phase_params(root / "warm", 1, 1)), None)  # decode once, for both
        print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}; "
              f"{args.trials} trials x {args.epochs} epochs each way, one thread per worker")
        rows = [measure(root, n, args.trials, args.epochs) for n in (1, 2)]
        print(f"load average after: {os.getloadavg()[0]:.2f}\n")

    print("| workers | trials (per worker) | mean trial s | trials/min while running | trials/min end to end |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['trials']} ({'+'.join(map(str, r['by_worker']))}) | {r['trial_s']:.2f} "
              f"| {r['per_min']:.1f} | {r['per_min_e2e']:.1f} (wall {r['wall_s']:.1f} s) |")
    one, two = rows
    print(f"\nspeedup with 2 workers: {two['per_min'] / one['per_min']:.2f}x while running, "
          f"{two['per_min_e2e'] / one['per_min_e2e']:.2f}x end to end (target >= 1.7x)")
    print(f"reproduce: .venv/bin/python benchmarks/workers.py --trials {args.trials} --epochs {args.epochs}")


if __name__ == "__main__":
    main()
