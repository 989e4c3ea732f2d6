"""Shared fixtures: a private cache folder per test, and small real image datasets on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tunewise.data import cache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own disk cache and an empty in-memory cache."""
    monkeypatch.setenv("TUNEWISE_CACHE_DIR", str(tmp_path / "cache"))
    cache.clear_memory()
    yield tmp_path / "cache"
    cache.clear_memory()


def write_png_folder(root, n_per_class=12, classes=("cat", "dog", "fox"), size=20, seed=0):
    """A class-folder dataset of real PNG files whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            base = np.zeros((size, size, 3), dtype=np.uint8)
            base[..., c % 3] = 200
            img = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def png_folder(tmp_path):
    return write_png_folder(tmp_path / "images")
