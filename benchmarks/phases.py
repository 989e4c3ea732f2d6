"""Quick against precise, and warm start against cold: the seed's two claims, measured.

On the synthetic dataset sized like the seed's middle case (6,000 images, 10 classes,
32 px: "5-10K images, +2.1% on average"), with TPE and a median pruner over a wide space
(lr, batch size, weight decay, dropout), one study runs the seed's quick phase (20
trials, the default settings first as the baseline), then is resumed to a precise search
of 100 trials, exactly as `tunewise tune --set n_trials=100` after the quick phase would.
The plateau rule is off so both run their full budgets.

- 80/20: the quick phase's gain over the baseline as a share of the precise search's
  final gain, and its time as a share of the precise search's time.
- Warm against cold, at equal trials: two new studies of 20 trials with the same sampler
  seed; the warm one starts from the quick phase's best 5 trials (`warm_start_from`,
  clipped to its space), the cold one from the baseline. Their best after 20 trials, and
  how many trials each needed to reach the quick phase's best.

    .venv/bin/python benchmarks/phases.py                 # the full run
    .venv/bin/python benchmarks/phases.py --precise 40    # shorter
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna
import torch

from tunewise import params as P
from tunewise.study.storage import open_storage
from tunewise.phases.tuning import tune
from tunewise.records import best_value as best_f1
from tunewise.study.warmstart import trials_to_reach

SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6000, help="synthetic images (the seed's middle case: 5-10K)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--noise", type=float, default=0.35, help="synthetic pixel noise (higher: harder, more to gain)")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--model", default="test_resnet", help="a timm model (tiny, so 140 trials fit on 2 CPU cores)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial (the median pruner judges after epoch 1)")
    ap.add_argument("--quick", type=int, default=20, help="trials of the quick phase")
    ap.add_argument("--precise", type=int, default=100, help="trials of the precise search (the quick study resumed)")
    ap.add_argument("--warm", type=int, default=20, help="trials of the warm and of the cold study")
    ap.add_argument("--warm-n", type=int, default=5, help="best quick trials the warm study starts from")
    ap.add_argument("--out", help="run folder (default: a temporary one)")
    return ap.parse_args()


def main() -> None:
    args = parse()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out or tempfile.mkdtemp(prefix="tunewise-phases-"))
    base = {
        "dataset": "synthetic", "synthetic_samples": args.samples, "synthetic_classes": args.classes,
        "synthetic_noise": args.noise,
        "img_size": args.img_size, "model": args.model, "epochs": args.epochs, "run_dir": str(out),
        "cache_dir": str(out / "cache"), "search_space": SPACE, "timeout": None,
        "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
        "stop_rules": {"plateau": False}, "sampler": {"name": "tpe", "multivariate": True},
    }

    def run(**extra) -> tuple[dict, float]:
        start = time.perf_counter()
        summary = tune(P.resolve(overrides={**base, **extra}))
        return summary, time.perf_counter() - start

    quick, quick_s = run(study_name="precise", n_trials=args.quick)
    print(f"quick: {quick['headline']}", flush=True)
    sampler = {"name": "tpe", "multivariate": True, "seed": 1}
    warm, warm_s = run(study_name="warm", n_trials=args.warm, sampler=sampler, warm_start_from=["precise"],
                       warm_start_n=args.warm_n, baseline=False)
    print(f"warm: {warm['headline']}", flush=True)
    cold, cold_s = run(study_name="cold", n_trials=args.warm, sampler=sampler)
    print(f"cold: {cold['headline']}", flush=True)
    precise, precise_s = run(study_name="precise", n_trials=args.precise)
    print(f"precise: {precise['headline']}", flush=True)

    storage = open_storage(None, out)
    load = lambda name: optuna.load_study(study_name=name, storage=storage)  # noqa: E731
    base_f1 = precise["baseline_value"]
    quick_gain, final_gain = quick["best_value"] - base_f1, precise["best_value"] - base_f1
    total_s = quick_s + precise_s
    quick_best = quick["best_value"]

    print()
    print(f"synthetic, {args.samples} images, {args.classes} classes, noise {args.noise}, {args.img_size} px, {args.model}, "
          f"{args.epochs} epochs per trial, TPE + median pruner; {platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, Optuna {optuna.__version__}")
    print()
    print("| search | trials | best macro-F1 | gain over baseline | share of final gain | time s | share of time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| baseline (default settings) | 1 | {base_f1:.4f} | | | | |")
    print(f"| quick | {args.quick} | {quick_best:.4f} | {quick_gain:+.4f} ({quick_gain / base_f1:+.1%}) | "
          f"{_share(quick_gain, final_gain)} | {quick_s:.0f} | {quick_s / total_s:.0%} |")
    print(f"| precise | {args.precise} | {precise['best_value']:.4f} | {final_gain:+.4f} ({final_gain / base_f1:+.1%}) | "
          f"100% | {total_s:.0f} | 100% |")
    print()
    cold_best = best_f1(load("cold"))
    print(f"| start ({args.warm} trials each, same sampler seed) | best macro-F1 | trials to reach the cold best "
          f"{cold_best:.4f} | trials to reach the quick best {quick_best:.4f} | time s |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in ((f"warm (best {args.warm_n} quick trials first)", warm_s), ("cold (baseline first)", cold_s)):
        study = load(name.split()[0])
        reached = [trials_to_reach(study, target) or "not reached" for target in (cold_best, quick_best)]
        print(f"| {name} | {best_f1(study):.4f} | {reached[0]} | {reached[1]} | {seconds:.0f} |")
    print()
    print("reproduce: .venv/bin/python benchmarks/phases.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"))
    print(f"studies: {out / 'study.journal'}")


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole > 0 else "n/a (no final gain)"


if __name__ == "__main__":
    main()
