"""Cached tensors vs the usual DataLoader, on a real PNG folder.

The same short study (identical trials: model, epochs, batch size, optimizer) is run
three ways on a generated folder of PNG files:
- naive: torchvision ImageFolder + PIL decoding + transforms in a DataLoader, every epoch
  of every trial, as most training scripts do (num_workers as given);
- cached: tunewise's `load_images` (decode once with every core, then memory) and
  `train_and_evaluate` slicing batches from the uint8 tensor;
- bare: a plain training loop over float tensors already in memory, no augmentation,
  the floor any pipeline can reach.
Data time per trial = loading + making training batches. Prints a markdown table and
the command that reproduces it.

    .venv/bin/python benchmarks/cache.py [--images 10000] [--trials 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from tunewise.data import cache
from tunewise.train.hparams import TrainConfig
from tunewise.train.models import build_model, model_norm
from tunewise.data.sources import DataSpec, synthetic_images
from tunewise.data.splits import train_val_split
from tunewise.train.loop import evaluate, seed_everything, train_and_evaluate
from tunewise.data.batches import Batches


def write_png_folder(root: Path, n: int, size: int, classes: int) -> None:
    images, labels, names = synthetic_images(n, classes, size, seed=0)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        Image.fromarray(img.transpose(1, 2, 0)).save(root / names[y] / f"{i:06d}.png")


def naive_trial(root: Path, train_idx, val_idx, cfg: TrainConfig, img_size: int, workers: int) -> dict:
    """The DataLoader way: decode and transform every PNG, every epoch."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    start = time.perf_counter()
    seed_everything(cfg.seed)
    model = build_model(cfg.model, len(os.listdir(root)))
    mean, std = model_norm(model)
    tf = transforms.Compose([transforms.Resize((img_size, img_size)), transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    train = DataLoader(Subset(ds, train_idx), batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers)
    val = DataLoader(Subset(ds, val_idx), batch_size=cfg.eval_batch_size, num_workers=workers)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    data_s = 0.0
    for _ in range(cfg.epochs):
        model.train()
        t = time.perf_counter()
        for x, y in train:
            data_s += time.perf_counter() - t
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            t = time.perf_counter()
        model.eval()
        with torch.inference_mode():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val)
    return {"wall_s": time.perf_counter() - start, "data_s": data_s, "acc": correct / len(val_idx)}


def cached_trial(spec: DataSpec, train_idx, val_idx, cfg: TrainConfig, study: dict) -> dict:
    """As in a tunewise study: the objective loads the data once (the first trial pays
    for it) and every trial slices batches from that one copy."""
    start = time.perf_counter()
    if "data" not in study:
        study["data"] = cache.load_images(spec)
    data = study["data"]
    load_s = time.perf_counter() - start
    result = train_and_evaluate(data, train_idx, val_idx, cfg)
    return {"wall_s": time.perf_counter() - start, "data_s": load_s + result.data_s, "acc": result.accuracy, "origin": data.origin}


def bare_trial(spec: DataSpec, train_idx, val_idx, cfg: TrainConfig) -> dict:
    """Floats already normalized in memory, randperm slicing, no augmentation."""
    data = cache.load_images(spec)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.num_classes)
    mean, std = model_norm(model)
    x_all = ((data.images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    y_all = data.labels
    tr = torch.as_tensor(train_idx)
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    val = Batches(data.images, data.labels, torch.as_tensor(val_idx), cfg.eval_batch_size, mean, std)
    for _ in range(cfg.epochs):
        model.train()
        order = tr[torch.randperm(len(tr))]
        for i in range(len(tr) // cfg.batch_size):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            opt.zero_grad()
            loss_fn(model(x_all[idx]), y_all[idx]).backward()
            opt.step()
        _, acc = evaluate(model, val, data.num_classes, torch.autocast("cpu", enabled=False))
    return {"wall_s": time.perf_counter() - start, "data_s": 0.0, "acc": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--png-size", type=int, default=64, help="side of the PNG files written")
    ap.add_argument("--img-size", type=int, default=32, help="side the pipelines train at")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="test_convnext")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive pipeline")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunewise-bench-"))
    os.environ["TUNEWISE_CACHE_DIR"] = str(work / "cache")
    try:
        root = work / "pngs"
        t = time.perf_counter()
        write_png_folder(root, args.images, args.png_size, 10)
        print(f"wrote {args.images} PNGs ({args.png_size}px) in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        spec = DataSpec(str(root), img_size=args.img_size)
        listing_labels = np.array([int(p.parent.name.split("_")[1]) for p in sorted(root.rglob("*.png"))])
        train_idx, val_idx = train_val_split(listing_labels, [str(i) for i in range(10)], 0.2, seed=0)
        same = dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0.0)
        rows, study = [], {}
        for t_i in range(args.trials):
            cfg = TrainConfig(**same, lr=1e-3 * (t_i + 1), hflip=False, crop="none")
            naive = naive_trial(root, train_idx, val_idx, cfg, args.img_size, args.workers)
            cached = cached_trial(spec, train_idx, val_idx, cfg, study)
            cached_aug = cached_trial(spec, train_idx, val_idx, TrainConfig(**same, lr=1e-3 * (t_i + 1)), study)
            bare = bare_trial(spec, train_idx, val_idx, cfg)
            rows.append((t_i, naive, cached, cached_aug, bare))
            print(f"trial {t_i}: naive {naive['wall_s']:.1f}s cached {cached['wall_s']:.1f}s ({cached['origin']}) bare {bare['wall_s']:.1f}s", file=sys.stderr)
        # What a fresh process (a new study, a papermill run) pays: list + fingerprint the
        # folder and memory-map the disk entry; and a re-list on a warm in-memory cache.
        cache.clear_memory()
        t = time.perf_counter()
        assert cache.load_images(spec).origin == "disk"
        disk_s = time.perf_counter() - t
        t = time.perf_counter()
        cache.load_images(spec)
        relist_s = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # The first trial of a study pays the one-time decode; the others are steady state.
    def mean(key, col, first=1):
        return float(np.mean([r[col][key] for r in rows[first:]]))

    print(f"\n## Cache benchmark ({args.images} PNG images {args.png_size}px -> {args.img_size}px, {args.model}, "
          f"{args.trials} trials x {args.epochs} epochs, batch {args.batch_size})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print("| pipeline | trial wall s | data s per trial | data share of wall | first trial data s | study data s |")
    print("|---|---|---|---|---|---|")
    names = (f"naive DataLoader (PIL, workers={args.workers})", "tunewise cache", "tunewise cache + flip/translate aug", "bare loop (floats in memory)")
    for col, name in enumerate(names, start=1):
        wall, data = mean("wall_s", col), mean("data_s", col)
        study_data = sum(r[col]["data_s"] for r in rows)
        print(f"| {name} | {wall:.2f} | {data:.3f} | {100 * data / wall:.1f}% | {rows[0][col]['data_s']:.2f} | {study_data:.2f} |")
    print("\n(trial wall, data per trial and share: mean over trials 2..N; the first trial includes the one-time decode)")
    naive_data, cached_data = mean("data_s", 1), mean("data_s", 2)
    study_ratio = sum(r[1]["data_s"] for r in rows) / sum(r[2]["data_s"] for r in rows)
    print(f"data time per trial, naive / cached: {naive_data / cached_data:.1f}x (target >= 20x); "
          f"over the whole {args.trials}-trial study including the cold decode: {study_ratio:.1f}x")
    print(f"load_images in a new process (disk cache, memory-mapped): {disk_s:.2f} s; again in the same process: {relist_s:.2f} s "
          f"(both re-list and fingerprint the {args.images} files)")
    print(f"cached data share of trial wall time: {100 * cached_data / mean('wall_s', 2):.1f}% (target <= 5%)")
    print(f"cached trial wall / bare loop wall: {mean('wall_s', 2) / mean('wall_s', 4):.3f}x (target <= 1.10x)")
    print(f"\nreproduce: .venv/bin/python benchmarks/cache.py --images {args.images} --trials {args.trials} --epochs {args.epochs} --workers {args.workers}")


if __name__ == "__main__":
    main()
