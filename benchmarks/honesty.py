"""Does tunewise overclaim? Real searches followed by real validation, many times over.

Each replicate is the user's path, end to end: a quick search (`tuning.tune`, the baseline as
trial 0, a random sampler seeded by the replicate), then the validation phase
(`notebook.run_validation` on fresh splits, `Validation.compare`: the corrected resampled
t-test) of the baseline against the study's best. Each replicate draws its own synthetic data
set (synthetic_seed) and sampler seed. Two families:

- near-null: lr and weight decay within +-10% of the defaults. The settings cannot differ in
  expected score, while the runs still do (the table counts the distinct trial scores, so a
  test that cannot fail shows). Target: at least 95% of verdicts "within noise".
- real: lr from 3x to 30x the default on a harder synthetic set, where the defaults underfit
  at this budget. Target: at least 80% of replicates call a real gain.

For every replicate: the optimism of the search (the winner's score in its study minus its mean
on fresh splits) and the advisor's predicted gain against the measured one.

    PYTHONPATH=lib .venv/bin/python benchmarks/honesty.py                 # the full run: 20 replicates each
    PYTHONPATH=lib .venv/bin/python benchmarks/honesty.py --replicates 5  # reduced
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time

import optuna

from tunewise import notebook as tw
from tunewise import params as P
from tunewise.phases.advice import advise
from tunewise.phases.tuning import tune
from tunewise.phases.validate import REAL_GAIN, WITHIN_NOISE
from tunewise.train.hparams import TrainConfig

DEFAULT = TrainConfig()
FAMILIES = {
    "near-null": {
        "search_space": {
            "lr": {"type": "float", "low": 0.9 * DEFAULT.lr, "high": 1.1 * DEFAULT.lr},
            "weight_decay": {"type": "float", "low": 0.9 * DEFAULT.weight_decay, "high": 1.1 * DEFAULT.weight_decay},
        },
        "synthetic_noise": 0.1,
        "target": (WITHIN_NOISE, 0.95),
    },
    "real": {
        "search_space": {"lr": {"type": "float", "low": 3 * DEFAULT.lr, "high": 30 * DEFAULT.lr, "log": True}},
        "synthetic_noise": 0.3,
        "target": (REAL_GAIN, 0.80),
    },
}


def replicate(family: str, r: int, args) -> dict:
    spec = FAMILIES[family]
    with tempfile.TemporaryDirectory() as run_dir:
        p = P.resolve(overrides={
            "dataset": "synthetic", "synthetic_samples": args.images, "synthetic_noise": spec["synthetic_noise"],
            "synthetic_seed": r, "img_size": 32, "model": "test_convnext", "epochs": args.epochs, "batch_size": 32,
            "n_trials": args.trials, "search_space": spec["search_space"], "sampler": {"name": "random", "seed": r},
            "pruner": "none", "run_dir": run_dir, "study_name": f"{family}-{r}", "interactive": False,
            "device": "cpu", "seeds": args.seeds, "phase": "quick",
        })
        with contextlib.redirect_stdout(io.StringIO()):  # the per-run progress lines
            summary = tune(p)
            study = tw.load_study(p, summary["study_name"])
            scores = [t.value for t in study.trials if t.value is not None]
            configs = tw.validation_configs(study, 1)
            validation = tw.run_validation(p, configs, study)
        comparison = validation.compare("baseline", "best")
        means = validation.means
        advice = advise(tw.situation(p))
        return {
            "verdict": comparison.verdict, "test": comparison.test, "distinct": len(set(scores)), "trials": len(scores),
            "study_best": summary["best_value"], "fresh_best": means["best"], "fresh_base": means["baseline"],
            "optimism": summary["best_value"] - means["best"],
            "gain": means["best"] - means["baseline"],
            "advised": f"{advice.verdict}, {advice.expected_gain}",
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=20)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    # Enough steps for the runs to learn: at 200 images and 3 epochs (15 steps) the near-null
    # trials all gave the same score, a test that cannot fail.
    ap.add_argument("--images", type=int, default=1000, help="synthetic images per replicate")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--trials", type=int, default=4, help="trials per search, the baseline included")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 777, 2024], help="validation seeds")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{args.replicates} replicates per family; synthetic {args.images} images, test_convnext 32 px, "
          f"{args.epochs} epochs, {args.trials} trials, validation seeds {args.seeds}\n")
    for family in args.families:
        start = time.perf_counter()
        rows = []
        print(f"### {family}\n")
        print("| rep | trials (distinct scores) | study best | fresh best | fresh baseline | optimism | gain | verdict | advisor |")
        print("|---:|---|---:|---:|---:|---:|---:|---|---|")
        for r in range(args.replicates):
            row = replicate(family, r, args)
            rows.append(row)
            print(f"| {r} | {row['trials']} ({row['distinct']}) | {row['study_best']:.4f} | {row['fresh_best']:.4f} | "
                  f"{row['fresh_base']:.4f} | {row['optimism']:+.4f} | {row['gain']:+.4f} | {row['verdict']} | "
                  f"{row['advised']} |", flush=True)
        want, target = FAMILIES[family]["target"]
        share = sum(r["verdict"] == want for r in rows) / len(rows)
        degenerate = sum(r["distinct"] < 2 for r in rows)
        if degenerate:
            print(f"\n{degenerate} replicate(s) with one distinct trial score: the settings did not change the runs, "
                  "so they cannot test overclaiming; use more images or epochs")
        print(f"\n{family}: {share:.0%} of {len(rows)} verdicts say {want!r} (target >= {target:.0%}); "
              f"mean optimism {statistics.mean(r['optimism'] for r in rows):+.4f}; "
              f"mean measured gain {statistics.mean(r['gain'] for r in rows):+.4f}; "
              f"replicates with all trial scores distinct: {sum(r['distinct'] == r['trials'] for r in rows)}/{len(rows)}; "
              f"test: {rows[0]['test']}; {time.perf_counter() - start:.0f} s\n", flush=True)


if __name__ == "__main__":
    main()
