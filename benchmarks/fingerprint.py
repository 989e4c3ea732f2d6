"""What identity by content costs: the fingerprint of a PNG folder, cold (every file read
and hashed, no index yet) and warm (a new run: hashes from the index, files only stat'ed).

    .venv/bin/python benchmarks/fingerprint.py [--images 2000] [--size 64] [--repeat 3]

Times cover listing the folder plus the fingerprint (what `load_images` does before it
looks in the cache). The files are in the OS page cache either way: on a cold disk or a
network file system the cold figure grows with the bytes read, the warm one does not.
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

from PIL import Image

from tunewise.data import cache, fingerprint, sources
from tunewise.data.sources import DataSpec, synthetic_images


def write_png_folder(root: Path, n: int, size: int, classes: int = 10) -> int:
    images, labels, names = synthetic_images(n, classes, size, seed=0)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        Image.fromarray(img.transpose(1, 2, 0)).save(root / names[y] / f"{i:06d}.png")
    old = time.time_ns() - 3600 * 10**9  # a dataset is rarely written seconds before a run
    total = 0
    for p in root.rglob("*.png"):
        os.utime(p, ns=(old, old))
        total += p.stat().st_size
    return total


def timed_fingerprint(spec: DataSpec, cache_dir: Path) -> tuple[float, fingerprint.Fingerprint]:
    start = time.perf_counter()
    listing = sources.list_files(spec)
    fp = cache.fingerprint_files(listing, spec, cache_dir)
    elapsed = time.perf_counter() - start
    fp.save(cache_dir)
    return elapsed, fp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="side of the PNGs, pixels")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tunewise-fp-"))
    try:
        data = tmp / "images"
        total = write_png_folder(data, args.images, args.size)
        spec = DataSpec(str(data))
        cold, warm = [], []
        for r in range(args.repeat):
            cache_dir = tmp / f"cache{r}"
            t, fp = timed_fingerprint(spec, cache_dir)
            assert fp.hashed == args.images
            cold.append(t)
            t, again = timed_fingerprint(spec, cache_dir)
            assert again.hashed == 0 and again.value == fp.value
            warm.append(t)
        print(f"{args.images:,} PNGs of {args.size} px ({total / 1e6:.1f} MB), {platform.machine()}, "
              f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
        print(f"fingerprint cold (read + BLAKE2b every file): {min(cold):.3f} s (best of {args.repeat})")
        print(f"fingerprint warm (hash index hit, stat only):  {min(warm):.3f} s (best of {args.repeat})")
        print(f"command: .venv/bin/python benchmarks/fingerprint.py --images {args.images} --size {args.size} --repeat {args.repeat}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
