"""Stratified train/validation splits by seed, and stratified k folds (scikit-learn's)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from tunewise.errors import ConfigError, DataError


def _check_counts(labels: np.ndarray, classes: list[str], need: int, why: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    short = [f"{classes[i]} ({int(c)})" for i, c in enumerate(counts) if c < need]
    if short:
        raise DataError(
            f"dataset: class(es) with too few images {why}: {', '.join(short)}; "
            f"allowed: at least {need} images in every class"
        )


def train_val_split(labels, classes: list[str], val_fraction: float = 0.2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified split: every class keeps its share in both parts."""
    labels = np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction: {val_fraction!r} is out of range; allowed: strictly between 0 and 1")
    _check_counts(labels, classes, 2, "to split into train and validation")
    n_val = int(np.ceil(val_fraction * len(labels)))
    if n_val < len(classes) or len(labels) - n_val < len(classes):
        raise DataError(
            f"val_fraction: {val_fraction} of {len(labels)} images gives {n_val} validation images, fewer than "
            f"the {len(classes)} classes (or too few left to train); allowed: a fraction leaving at least one image per class on each side"
        )
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


def kfold_splits(labels, classes: list[str], k: int = 5, seed: int = 42) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified (train, validation) index pairs covering every image once as validation."""
    labels = np.asarray(labels)
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"folds: {k!r} is not allowed; allowed: an integer >= 2")
    _check_counts(labels, classes, k, f"for {k} folds")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in skf.split(np.zeros(len(labels)), labels)]
