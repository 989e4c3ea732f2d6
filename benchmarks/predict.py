"""`tunewise predict` against a plain timm + torchvision DataLoader loop, on the same PNG
folder and the same exported model folder; then the cost of flip TTA and of a 5-model ensemble.

- plain: timm.create_model("local-dir:..."), timm's eval transform, torchvision's
  ImageFolder-style dataset in a DataLoader (num_workers = every core), batches of --batch;
- tunewise: `tunewise.predict(...)` (parallel decode with data/decode.py, batched forward),
  with and without --tta, and with 5 model folders (an ensemble).
One run each (the first call of each also pays for loading the model). Images per second;
the ratio tunewise / plain. Prints a markdown table and the command.

    .venv/bin/python benchmarks/predict.py [--images 400] [--size 32] [--model test_convnext]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import tunewise
from tunewise.data.decode import default_workers
from tunewise.phases.final import export_model


class Folder(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def plain_loop(model_dir: Path, paths: list[str], batch: int, device: torch.device) -> np.ndarray:
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval().to(device)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    loader = torch.utils.data.DataLoader(Folder(paths, transform), batch_size=batch, num_workers=default_workers())
    out = []
    with torch.inference_mode():
        for x in loader:
            out.append(model(x.to(device)).softmax(1).cpu())
    return torch.cat(out).numpy()


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=32, help="model input side, px (the files are 1.5x that)")
    ap.add_argument("--model", default="test_convnext")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    tmp = Path(tempfile.mkdtemp(prefix="tw-predict-bench-"))
    try:
        rng = np.random.default_rng(0)
        side = int(args.size * 1.5)  # files larger than the input: both sides resize
        folder = tmp / "images"
        folder.mkdir()
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        classes = [f"c{i}" for i in range(10)]
        values = {"img_size": args.size, "resize": "squash"}
        dirs = []
        for k in range(5):  # untrained weights: the speed does not depend on them
            torch.manual_seed(k)
            model = timm.create_model(args.model, num_classes=len(classes))
            dirs.append(export_model(model, tmp / f"model{k}", classes, values, {"role": "benchmark"}))
        paths = sorted(str(p) for p in folder.iterdir())

        plain, t_plain = timed(lambda: plain_loop(dirs[0], paths, args.batch, device))
        ours, t_ours = timed(lambda: tunewise.predict(dirs[0], folder, device=str(device), batch_size=args.batch))
        _, t_tta = timed(lambda: tunewise.predict(dirs[0], folder, tta=True, device=str(device), batch_size=args.batch))
        _, t_ens = timed(lambda: tunewise.predict(dirs, folder, device=str(device), batch_size=args.batch))
        agree = float((plain.argmax(1) == ours.probs.argmax(1)).mean())
        max_diff = float(np.abs(plain - ours.probs).max())
        n = args.images
        print(f"\n{n} PNG files {side}x{side} -> {args.size} px, {args.model}, device {device}, "
              f"{default_workers()} cores, torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}\n")
        print("| run | seconds | images/s | vs plain |")
        print("|---|---|---|---|")
        for name, t in [("plain timm + torchvision DataLoader", t_plain), ("tunewise predict", t_ours),
                        ("tunewise predict --tta", t_tta), ("tunewise predict, 5-model ensemble", t_ens)]:
            print(f"| {name} | {t:.2f} | {n / t:.0f} | {t_plain / t:.2f}x |")
        print(f"\nsame argmax on {agree:.1%} of images, largest probability difference {max_diff:.2g}")
        print(f"TTA costs {t_tta / t_ours:.2f}x a plain predict; the 5-model ensemble {t_ens / t_ours:.2f}x")
        print("command: " + " ".join([".venv/bin/python", "benchmarks/predict.py", *sys.argv[1:]]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
