"""Decode image files once into a uint8 (N, 3, H, W) array, using every core.

This module imports only numpy and PIL so the worker processes start fast and never
touch torch (forking after torch/CUDA initialisation is only safe for such workers).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
RESIZE_MODES = ("squash", "crop")  # squash: stretch to a square; crop: shorter side, then centre crop


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, palette, RGBA, 16-bit, CMYK) as 8-bit RGB.

    Transparent pixels are composited over white, not left as whatever colour
    the RGB channels happen to hold under alpha 0.
    """
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
    return img.convert("RGB")


def resize_square(img: Image.Image, size: int, mode: str) -> Image.Image:
    if mode == "crop":
        return ImageOps.fit(img, (size, size), method=Image.BILINEAR)
    return img.resize((size, size), Image.BILINEAR)


def decode_one(path: str, size: int, mode: str) -> np.ndarray:
    """One file -> (3, size, size) uint8. Raises on unreadable or corrupt files."""
    with Image.open(path) as img:
        # JPEG draft mode decodes at a reduced scale straight away: much faster for
        # large photos that end up at 32-224 px anyway.
        img.draft("RGB", (size * 2, size * 2))
        img = ImageOps.exif_transpose(img)
        img.load()
        rgb = resize_square(to_rgb(img), size, mode)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _decode_chunk(args: tuple[list[str], int, str]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    paths, size, mode = args
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    bad: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_one(path, size, mode)
        except Exception as exc:  # any decoder error means "this file is unusable"
            bad.append((i, f"{type(exc).__name__}: {exc}"))
    return out, bad


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_files(
    paths: Sequence[str], size: int, mode: str = "squash", workers: int | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode every path. Returns the image array and {index: error} for bad files
    (their rows are left zero; the caller decides whether to drop them or refuse)."""
    workers = workers or default_workers()
    n = len(paths)
    if workers <= 1 or n < 64:
        images, bad = _decode_chunk((list(paths), size, mode))
        return images, dict(bad)
    # Several chunks per worker so one slow chunk does not leave the others idle.
    n_chunks = min(n, workers * 8)
    bounds = np.linspace(0, n, n_chunks + 1, dtype=int)
    chunks = [(list(paths[a:b]), size, mode) for a, b in zip(bounds[:-1], bounds[1:])]
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    bad_all: dict[int, str] = {}
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for start, (chunk_images, bad) in zip(bounds[:-1], pool.map(_decode_chunk, chunks)):
            images[start : start + len(chunk_images)] = chunk_images
            bad_all.update({start + i: err for i, err in bad})
    return images, bad_all
