"""Stratified splits (scikit-learn's): the untouched test split, carved out first with its
own seed, then train/validation splits by seed and stratified k folds of what is left.

Order matters: the test split is drawn from the whole dataset with ``test_seed`` alone, so it
is the same whatever the split seed, the validation seeds or the search do; every
train/validation split takes a ``pool`` (the images not held out) and never leaves it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from typing import Any

from tunewise.errors import ConfigError, DataError, FieldChecks, is_int


def _check_counts(labels: np.ndarray, classes: list[str], need: int, why: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    short = [f"{classes[i]} ({int(c)})" for i, c in enumerate(counts) if c < need]
    if short:
        raise DataError(
            f"dataset: class(es) with too few images {why}: {', '.join(short)}; "
            f"allowed: at least {need} images in every class"
        )


def train_val_split(labels, classes: list[str], val_fraction: float = 0.2, seed: int = 42,
                    pool=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified split: every class keeps its share in both parts.

    ``pool``: the indices to split (the images outside the test split); None: all of them.
    The indices returned are always into the whole dataset."""
    labels, pool = _pooled(labels, pool)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction: {val_fraction!r} is out of range; allowed: strictly between 0 and 1")
    _check_counts(labels, classes, 2, "to split into train and validation")
    n_val = int(np.ceil(val_fraction * len(labels)))
    if n_val < len(classes) or len(labels) - n_val < len(classes):
        raise DataError(
            f"val_fraction: {val_fraction} of {len(labels)} images gives {n_val} validation images, fewer than "
            f"the {len(classes)} classes (or too few left to train); allowed: a fraction leaving at least one image per class on each side"
        )
    train_idx, val_idx = train_test_split(pool, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)


def kfold_splits(labels, classes: list[str], k: int = 5, seed: int = 42, pool=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified (train, validation) index pairs covering every image of ``pool`` (None:
    all) once as validation; indices into the whole dataset."""
    labels, pool = _pooled(labels, pool)
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"folds: {k!r} is not allowed; allowed: an integer >= 2")
    _check_counts(labels, classes, k, f"for {k} folds")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(pool[a]), np.sort(pool[b])) for a, b in skf.split(np.zeros(len(labels)), labels)]


def _pooled(labels, pool) -> tuple[np.ndarray, np.ndarray]:
    """The labels of ``pool`` and the pool's indices (every index when pool is None)."""
    labels = np.asarray(labels)
    if pool is None:
        return labels, np.arange(len(labels))
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    return labels[pool], pool


# ---- the untouched test split -------------------------------------------------------------

AUTO = "auto"
AUTO_TEST_FRACTION = 0.1  # what test_fraction "auto" holds out when the data allows it
# "auto" holds out a test split only if every class gets at least this many test images:
# fewer, and one class's test score moves by 1/MIN_TEST_PER_CLASS per image.
MIN_TEST_PER_CLASS = 10


@dataclass(frozen=True)
class HeldOut:
    """The images held out from everything but the final score; ``indices`` empty when off."""

    fraction: float  # share of the images held out (0: no test split)
    seed: int
    indices: np.ndarray  # into the whole dataset, sorted
    pool: np.ndarray  # every other index: what tuning and validation may draw from
    note: str  # why it is on or off, for the notebook

    @property
    def fingerprint(self) -> str:
        """A short hash of the held-out indices: the same split, the same fingerprint."""
        return hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:16]

    def identity(self) -> dict:
        """What a study records (tunewise.identity's ``test_split``): resuming with another
        test split is refused like a change of data."""
        return {"fraction": self.fraction, "seed": self.seed, "n": int(len(self.indices)),
                "indices_sha256": self.fingerprint}


def check_test_fraction(value) -> None:
    ok = value == AUTO or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1)
    if not ok:
        raise ConfigError(f"test_fraction: {value!r} is not allowed; allowed: \"auto\" (0.1 when every class "
                          f"keeps at least {MIN_TEST_PER_CLASS} test images, else none), 0 (no test split), "
                          "or a share in (0, 1) such as 0.1")


def held_out(labels, classes: list[str], test_fraction="auto", seed: int = 0) -> HeldOut:
    """Carve the stratified test split out of the whole dataset, with its own seed.

    ``"auto"``: AUTO_TEST_FRACTION when every class would keep at least MIN_TEST_PER_CLASS
    test images, else no test split (the note says why). A number: that share, which must
    leave at least one test image per class and two per class to split train/validation."""
    check_test_fraction(test_fraction)
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    counts = np.bincount(labels, minlength=len(classes))
    fraction = AUTO_TEST_FRACTION if test_fraction == AUTO else float(test_fraction)
    per_class = np.floor(fraction * counts)  # about what stratification gives the smallest class
    if test_fraction == AUTO and per_class.min() < MIN_TEST_PER_CLASS:
        small = classes[int(counts.argmin())]
        note = (f"no test split: test_fraction auto holds out {AUTO_TEST_FRACTION:g} only when every class keeps at "
                f"least {MIN_TEST_PER_CLASS} test images, and class {small} has {int(counts.min())} images "
                f"({int(per_class.min())} would be test); set test_fraction to a share to hold one out anyway")
        return HeldOut(0.0, seed, np.array([], dtype=np.int64), everything, note)
    if fraction == 0:
        return HeldOut(0.0, seed, np.array([], dtype=np.int64), everything,
                         "no test split: test_fraction is 0, so there is no unbiased score of the winner")
    n_test = int(np.ceil(fraction * len(labels)))
    _check_counts(labels, classes, 3, "to hold out a test split and still split train/validation")
    if n_test < len(classes) or len(labels) - n_test < 2 * len(classes):
        raise DataError(
            f"test_fraction: {fraction} of {len(labels)} images gives {n_test} test images; allowed: a share "
            f"giving at least one per class ({len(classes)}) and leaving two per class to train and validate"
        )
    rest, held = train_test_split(everything, test_size=n_test, stratify=labels, random_state=seed)
    note = (f"test split: {n_test} images ({fraction:g}, stratified, test_seed {seed}) held out before any "
            "train/validation split; no trial, narrowing, validation run or stop rule sees them")
    return HeldOut(fraction, seed, np.sort(held), np.sort(rest), note)


@dataclass(frozen=True)
class SplitSettings:
    """How a study's images are split to score a trial (stratified)."""

    val_fraction: float = 0.2  # share of images held out for validation (stratified)
    split_seed: int = 42  # seed of the train/validation split
    test_fraction: Any = "auto"  # untouched test split: auto (0.1 if every class keeps 10+ test images, else none) | 0 | a share
    test_seed: int = 0  # seed of the test split, drawn first and independent of split_seed

    def problems(self) -> list[str]:
        c = FieldChecks(self)
        c.need(isinstance(self.val_fraction, float) and 0 < self.val_fraction < 1, "val_fraction",
               "a number strictly between 0 and 1")
        c.need(is_int(self.split_seed) and self.split_seed >= 0, "split_seed", "an integer >= 0")
        try:
            check_test_fraction(self.test_fraction)
        except ConfigError as exc:
            c.errors.append(str(exc))
        c.need(is_int(self.test_seed) and 0 <= self.test_seed < 2**32, "test_seed", "an integer >= 0")
        return c.errors
