"""Record real 100-trial tunewise studies for the stop-rule benchmark (the "real" family).

Each study is a phase run by tunewise's own tuning path (`tunewise.phases.tuning.tune` with
a resolved config): timm's tiny `test_resnet` / `test_convnext` on the built-in digits or on
synthetic sets of a few sizes and difficulties, TPE or random sampling with several sampler
seeds, no pruner or the median pruner, the baseline (default settings) as trial 0, and no
stop rule but the trial cap, so all 100 trials run. After the study, the seed-to-seed noise
is measured the way the validation phase does (`notebook.run_validation`: the baseline and
the best trial retrained on 3 fresh seeds, pooled std), which is what a validation phase
records as the noise floor (`validate.save_noise`). The export keeps each configuration's
scores too: benchmarks/stop_rules.py takes the best configuration's std as the noise floor,
since after one epoch the baseline's own spread is far larger (the pooled std of the digits
studies at one epoch is 0.11, the best's 0.01).

Trials are made fast (300-1,800 images, 16-32 px, 1-8 epochs: about 0.4-2 s each on one
core); the 14 studies took 2,271 s (38 min) on one core of a busy 2-core machine. The export is
compact (gzip'ed JSON, one entry per study: its settings, the noise, and each trial's
number, state, value, duration, intermediate values and params), not journal files:

    benchmarks/data/real_studies.json.gz

To re-record (one core, about 40 minutes; the journals go to a temporary folder, the
export replaces benchmarks/data/real_studies.json.gz, 81 KB):

    OMP_NUM_THREADS=1 PYTHONPATH=lib .venv/bin/python benchmarks/record_studies.py
    # or again some of them, by name (the others are kept):
    #   ... benchmarks/record_studies.py --only digits16-resnet-e1-tpe0

Each finished study is written to the export at once (the file always holds every study
recorded so far), so an interrupted run keeps what it made; `--keep` leaves studies already
in the file alone and records only the missing ones.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import optuna  # noqa: E402
import torch  # noqa: E402

from tunewise import params as P  # noqa: E402
from tunewise.notebook import run_validation  # noqa: E402
from tunewise.phases.tuning import prepare, tune  # noqa: E402
from tunewise.phases.validate import noise_std  # noqa: E402
from tunewise.records import BASELINE_KEY  # noqa: E402

OUT = Path(__file__).resolve().parent / "data" / "real_studies.json.gz"
N_TRIALS = 100
NOISE_SEEDS = [1, 2, 3]  # validation's seeds for the noise estimate (baseline + best, 3 each)
SPACE = {  # the seed's wide space, with the batch sizes a CPU runs fast
    "lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
}
DIGITS16 = {"dataset": "digits", "img_size": 16, "model": "test_resnet"}
DIGITS32 = {"dataset": "digits", "img_size": 32, "model": "test_convnext"}


def synthetic(n: int, noise: float, model: str = "test_convnext", classes: int = 10, seed: int = 0) -> dict:
    size = 32 if model == "test_convnext" else 16  # test_convnext needs >= 32 px
    return {"dataset": "synthetic", "synthetic_samples": n, "synthetic_noise": noise,
            "synthetic_classes": classes, "synthetic_seed": seed, "img_size": size, "model": model}


def tpe(seed: int) -> dict:
    return {"name": "tpe", "seed": seed}


def rnd(seed: int) -> dict:
    return {"name": "random", "seed": seed}


MEDIAN = {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}

# name: settings (flat tunewise parameters). Ordered so that a cut-short run still has a
# spread of data, models and samplers.
STUDIES: dict[str, dict[str, Any]] = {
    "digits16-resnet-e1-tpe0": {**DIGITS16, "epochs": 1, "sampler": tpe(0)},
    "syn600-n0.2-resnet-e4-tpe0": {**synthetic(600, 0.2, "test_resnet"), "epochs": 4, "sampler": tpe(0)},
    "syn600-n0.6-resnet-e6-tpe1": {**synthetic(600, 0.6, "test_resnet"), "epochs": 6, "sampler": tpe(1)},
    "digits16-resnet-e2-random0": {**DIGITS16, "epochs": 2, "sampler": rnd(0)},
    "syn300-n0.35-5cls-resnet-e6-random1": {**synthetic(300, 0.35, "test_resnet", classes=5, seed=1),
                                            "epochs": 6, "sampler": rnd(1)},
    "digits32-convnext-e1-tpe2": {**DIGITS32, "epochs": 1, "sampler": tpe(2)},
    "syn800-n0.9-resnet-e6-tpe2-median": {**synthetic(800, 0.9, "test_resnet", seed=2), "epochs": 6,
                                          "sampler": tpe(2), "pruner": MEDIAN},
    "digits16-resnet-e2-tpe1": {**DIGITS16, "epochs": 2, "sampler": tpe(1)},
    "syn600-n0.2-resnet-e4-random2": {**synthetic(600, 0.2, "test_resnet"), "epochs": 4, "sampler": rnd(2)},
    "syn400-n0.35-resnet-e8-tpe3": {**synthetic(400, 0.35, "test_resnet", seed=3), "epochs": 8, "sampler": tpe(3)},
    "digits16-resnet-e2-tpe3-median": {**DIGITS16, "epochs": 2, "sampler": tpe(3), "pruner": MEDIAN},
    "syn600-n0.6-resnet-e6-random3": {**synthetic(600, 0.6, "test_resnet"), "epochs": 6, "sampler": rnd(3)},
    "digits32-convnext-e1-random4": {**DIGITS32, "epochs": 1, "sampler": rnd(4)},
    "digits16-resnet-e1-tpe5": {**DIGITS16, "epochs": 1, "sampler": tpe(5)},
}


def config(name: str, settings: dict[str, Any], root: Path) -> dict[str, Any]:
    return P.resolve(overrides={
        "run_dir": str(root / name), "study_name": name, "n_trials": N_TRIALS, "search_space": SPACE,
        "pruner": "none", "hflip": False, "stop_rules": {"plateau": False}, "interactive": False,
        "seeds": NOISE_SEEDS, **settings,
    })


def export_trial(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration is not None else None
    return {"n": t.number, "state": t.state.name, "value": t.value,
            "s": None if duration is None else round(duration, 3),
            "iv": [round(v, 5) for _, v in sorted(t.intermediate_values.items())],
            "params": t.params, **({"baseline": True} if t.user_attrs.get(BASELINE_KEY) else {})}


def record(name: str, settings: dict[str, Any], root: Path) -> dict[str, Any]:
    p = config(name, settings, root)
    started = time.perf_counter()
    prep = prepare(p)
    summary = tune(p, prep=prep)
    tuning_s = time.perf_counter() - started
    study = prep.study
    configs = {"baseline": {}, "best": dict(study.best_params)}
    validation = run_validation(p, configs, source=study)
    noise = noise_std(validation)
    print(f"{name}: best {summary['best_value']:.4f} (baseline {summary['baseline_value']:.4f}), noise "
          f"{noise:.4f}, {tuning_s:.0f} s tuning + {validation.wall_s:.0f} s noise", flush=True)
    return {
        "name": name, "settings": settings, "n_trials": N_TRIALS, "search_space": SPACE,
        "noise": noise, "noise_scores": validation.scores, "tuning_s": round(tuning_s, 1),
        "trials": [export_trial(t) for t in study.trials],
    }


def load(path: Path = OUT) -> dict[str, Any]:
    """The export: {"studies": [...], "meta": {...}} ({"studies": []} before any recording)."""
    if not path.exists():
        return {"studies": [], "meta": {}}
    with gzip.open(path, "rt") as f:
        return json.load(f)


def save(data: dict[str, Any], path: Path = OUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(data, f, separators=(",", ":"))
    tmp.replace(path)  # whole or not at all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="study names to record (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep studies already in the export")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = args.only or list(STUDIES)
    unknown = [name for name in names if name not in STUDIES]
    if unknown:
        parser.error(f"unknown studies {', '.join(unknown)}; known: {', '.join(STUDIES)}")
    data = load() if args.keep or args.only else {"studies": [], "meta": {}}
    done = {s["name"] for s in data["studies"]} if args.keep else set()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunewise-record-") as tmp:
        for name in names:
            if name in done:
                continue
            data["studies"] = [s for s in data["studies"] if s["name"] != name] + [record(name, STUDIES[name], Path(tmp))]
            data["meta"] = {
                "command": "OMP_NUM_THREADS=1 PYTHONPATH=lib .venv/bin/python benchmarks/record_studies.py",
                "machine": f"{platform.processor() or platform.machine()}, 1 thread",
                "python": platform.python_version(), "optuna": optuna.__version__, "torch": torch.__version__,
            }
            save(data)
    print(f"{len(data['studies'])} studies in {OUT} ({OUT.stat().st_size / 1024:.0f} KB), "
          f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
