"""Is the default recipe a fair baseline at every budget? Old defaults against the new ones.

The gain of tuning is measured against the default settings, so those must train well at the
user's budget. The old recipe warmed up for a fixed epoch and shifted images by up to 1/8 of
their side whatever the budget; the new one warms up for 5% of the run's steps and grows the
shifts with the epochs (full strength from 20). Both train timm's `test_convnext` at 32 px on
the built-in digits and on the synthetic set, at 3, 5 and 20 epochs, one seed each (the
train/validation split of the tuning phase, on the images the test split leaves), and the
table gives the validation macro-F1, the last epoch's fall in training loss against its mean
fall per epoch (what the pre-flight warns on, from 30%) and the seconds.

    PYTHONPATH=lib .venv/bin/python benchmarks/fair_baseline.py [--images 1000] [--epochs 3 5 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from tunewise.data.cache import load_images
from tunewise.data.sources import DataSpec
from tunewise.data.splits import held_out, train_val_split
from tunewise.train.hparams import TrainConfig
from tunewise.train.loop import STEEP_LAST_EPOCH, train_and_evaluate, undertrained

RECIPES = {
    "old": {"warmup_epochs": 1.0, "crop": "translate"},  # the defaults before issue 21
    "new": {},  # today's defaults: warmup 5% of the run, crop auto
}


def last_pace(losses: list[float]) -> float:
    """The last epoch's fall in training loss against the mean fall per epoch (what the
    pre-flight warns on, from STEEP_LAST_EPOCH)."""
    pace = (losses[0] - losses[-1]) / (len(losses) - 1) if len(losses) > 1 else 0.0
    return (losses[-2] - losses[-1]) / pace if pace > 0 else 0.0


def measure(dataset: str, n_images: int, epochs: int, recipe: dict) -> dict:
    spec = DataSpec(dataset, img_size=32, synthetic_samples=n_images) if dataset == "synthetic" else DataSpec(dataset, img_size=32)
    data = load_images(spec, use_disk=False)
    labels = data.labels.numpy()
    pool = held_out(labels, data.classes, "auto", 0).pool[: n_images]  # first n of the non-test images
    train, val = train_val_split(labels, data.classes, 0.2, 42, pool=pool)
    cfg = TrainConfig(model="test_convnext", epochs=epochs, **recipe)
    start = time.perf_counter()
    result = train_and_evaluate(data, train, val, cfg, device="cpu")
    losses = [m.train_loss for m in result.history]
    return {"f1": result.f1, "last_pace": last_pace(losses), "warns": undertrained(losses) is not None,
            "s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="images per dataset before the splits")
    ap.add_argument("--epochs", type=int, nargs="+", default=[3, 5, 20])
    ap.add_argument("--datasets", nargs="+", default=["digits", "synthetic"])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"test_convnext, 32 px, {args.images} images per dataset, 1 seed; macro-F1 on validation "
          f"(last = last epoch's fall in training loss against its mean fall per epoch; * = pre-flight warns, from {STEEP_LAST_EPOCH:.0%})\n")
    print("| dataset | epochs | old macro-F1 | new macro-F1 | new - old | old last | new last | old s | new s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dataset in args.datasets:
        for epochs in args.epochs:
            old, new = (measure(dataset, args.images, epochs, RECIPES[k]) for k in ("old", "new"))
            flag = lambda r: f"{r['last_pace']:.0%}{'*' if r['warns'] else ''}"  # noqa: E731
            print(f"| {dataset} | {epochs} | {old['f1']:.4f} | {new['f1']:.4f} | {new['f1'] - old['f1']:+.4f} | "
                  f"{flag(old)} | {flag(new)} | {old['s']:.0f} | {new['s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
