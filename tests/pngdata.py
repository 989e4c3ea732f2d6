"""Small real image datasets on disk for the tests (a module of its own, not conftest: the
notebooks folder has a conftest too, and two modules named conftest cannot both be imported)."""

from __future__ import annotations

import numpy as np
from PIL import Image


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
