"""Where images come from: the built-in sets (digits, synthetic) and the user's files
(a folder with one sub-folder per class, or a CSV of id,target rows plus an image folder).

A source is listed and checked here, before anything is decoded or trained, so bad input
fails at once with a message naming the file or field.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunewise.data.decode import IMAGE_SUFFIXES, RESIZE_MODES
from tunewise.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

BUILTIN = ("digits", "synthetic")
MAX_LISTED = 10  # how many offending files a message names before "... and N more"
# Sub-folder names that are splits, not classes: a folder holding them is a dataset's root.
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
_WARNED: set[str] = set()  # layouts already warned about in this process (one line per dataset)


@dataclass(frozen=True)
class DataSpec:
    """Everything that decides which pixels a study trains on (and so the cache key)."""

    dataset: str = "digits"  # digits | synthetic | path to a class-folder tree | path to a CSV
    image_dir: str | None = None  # CSV only: folder holding the images (default: the CSV's folder)
    img_size: int = 32  # side of the square images, pixels
    resize: str = "squash"  # squash: stretch to a square; crop: shorter side then centre crop
    skip_bad_images: bool = False  # skip unreadable images with a warning instead of refusing
    drop_duplicate_ids: bool = False  # CSV only: keep the first row of an image listed twice (same label) instead of refusing
    id_column: str = "id"  # CSV column naming the image (with or without its suffix)
    target_column: str = "target"  # CSV column holding the class
    synthetic_samples: int = 2000  # synthetic only: number of images
    synthetic_classes: int = 10  # synthetic only: number of classes
    synthetic_noise: float = 0.35  # synthetic only: pixel noise; higher is harder
    synthetic_seed: int = 0  # synthetic only: generator seed

    def check(self) -> None:
        errors = []
        if not isinstance(self.img_size, int) or isinstance(self.img_size, bool) or not 8 <= self.img_size <= 1024:
            errors.append(f"img_size: {self.img_size!r} is out of range; allowed: an integer from 8 to 1024")
        for flag in ("skip_bad_images", "drop_duplicate_ids"):
            if not isinstance(getattr(self, flag), bool):
                errors.append(f"{flag}: {getattr(self, flag)!r} is not allowed; allowed: true or false")
        if self.resize not in RESIZE_MODES:
            errors.append(f"resize: {self.resize!r} is not allowed; allowed: {', '.join(RESIZE_MODES)}{did_you_mean(self.resize, RESIZE_MODES)}")
        if self.dataset == "synthetic":
            if not 2 <= self.synthetic_classes <= 1000:
                errors.append(f"synthetic_classes: {self.synthetic_classes!r} is out of range; allowed: 2 to 1000")
            if not self.synthetic_samples >= 2 * self.synthetic_classes:
                errors.append(
                    f"synthetic_samples: {self.synthetic_samples!r} is too small; allowed: at least 2 per class "
                    f"({2 * self.synthetic_classes} for {self.synthetic_classes} classes)"
                )
            if not 0 <= self.synthetic_noise <= 5:
                errors.append(f"synthetic_noise: {self.synthetic_noise!r} is out of range; allowed: 0 to 5")
        if errors:
            raise ConfigError("\n".join(errors))


@dataclass
class FileListing:
    """Image files with their class labels, as found on disk (nothing decoded yet)."""

    root: Path
    paths: list[str]
    labels: np.ndarray  # int64 index into classes
    classes: list[str]
    kind: str  # "folder" or "csv"
    stats: list[tuple[str, int, int]] = field(default_factory=list)  # (relpath, size, mtime_ns)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _stat(paths: list[str], root: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((os.path.relpath(p, root), st.st_size, st.st_mtime_ns))
    return out


def _sorted_classes(values) -> list[str]:
    """Class names in a stable order: numerically when they are all integers."""
    values = sorted(set(values))
    try:
        return [str(v) for v in sorted(values, key=int)]
    except ValueError:
        return values


def list_folder(root: Path) -> FileListing:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and _is_image(p)][:3]
        hint = f" (found loose images such as {', '.join(loose)})" if loose else ""
        raise DataError(
            f"dataset: folder {root} has no class sub-folders{hint}; "
            f"allowed: one sub-folder per class, e.g. {root}/cat/001.png and {root}/dog/002.jpg"
        )
    paths, labels, empty = [], [], []
    for label, d in enumerate(class_dirs):
        files = sorted(str(p) for p in d.rglob("*") if p.is_file() and _is_image(p))
        if not files:
            empty.append(d.name)
        paths += files
        labels += [label] * len(files)
    if empty:
        raise DataError(
            f"dataset: class folder(s) with no images in {root}: {', '.join(empty)}; "
            f"image files end in {', '.join(IMAGE_SUFFIXES)}"
        )
    if len(class_dirs) < 2:
        raise DataError(f"dataset: folder {root} has only one class ({class_dirs[0].name}); allowed: at least 2 class sub-folders")
    _warn_if_dataset_root(root, class_dirs)
    return FileListing(root, paths, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs], "folder", _stat(paths, root))


def _warn_if_dataset_root(root: Path, class_dirs: list[Path]) -> None:
    """One warning line when `root` looks like a competition's or a split dataset's root
    (CSV files beside the sub-folders, or sub-folders named train/test/val): its
    sub-folders were taken as classes, which is rarely what was meant. A warning, not an
    error: a class may really be called "test"."""
    csvs = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    splits = [d.name for d in class_dirs if d.name.lower() in SPLIT_NAMES]
    if not (csvs or splits) or str(root) in _WARNED:
        return
    _WARNED.add(str(root))
    signs = ([f"{', '.join(csvs[:3])} beside the folders"] if csvs else []) + (
        [f"sub-folder(s) named {', '.join(splits)}"] if splits else []
    )
    train_csv = next((c for c in csvs if "train" in c.lower()), csvs[0] if csvs else None)
    train_dir = next((d for d in class_dirs if d.name.lower() == "train"), None)
    if train_csv:
        images = train_dir or next((d for d in class_dirs if d.name.lower() not in SPLIT_NAMES), class_dirs[0])
        hint = f"to train on its labelled rows: --set dataset={root / train_csv} --set image_dir={images}"
    elif train_dir and any(d.is_dir() for d in train_dir.iterdir()):
        hint = f"to train on its classes: --set dataset={train_dir}"
    else:
        hint = "point dataset at the folder holding one sub-folder per class, or at a CSV of id,target rows with image_dir"
    log.warning(
        "dataset: %s looks like a dataset's root (%s), yet its sub-folders were taken as the %d classes (%s); %s",
        root, "; ".join(signs), len(class_dirs), _few([d.name for d in class_dirs]), hint,
    )


def _read_rows(csv_path: Path, id_column: str, target_column: str) -> list[tuple[int, str, str]]:
    """(line number, id, target) for every row; a short row reads as empty values."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in (id_column, target_column) if c not in header]
            if missing:
                raise DataError(
                    f"dataset: {csv_path} lacks column(s) {', '.join(missing)}; it has: {', '.join(header) or '(no header)'}; "
                    f"allowed: a header with {id_column!r} and {target_column!r} (set id_column / target_column to use others)"
                )
            return [(reader.line_num, (r[id_column] or "").strip(), (r[target_column] or "").strip()) for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"dataset: {csv_path} cannot be read as a CSV ({exc}); allowed: UTF-8 text with a header row") from exc


def _index_by_stem(image_dir: Path) -> dict[str, list[str]]:
    """Competition CSVs often give ids without the file suffix: index the folder by stem once."""
    by_stem: dict[str, list[str]] = {}
    for p in sorted(image_dir.iterdir()):
        if p.is_file() and _is_image(p):
            by_stem.setdefault(p.stem, []).append(str(p))
    return by_stem


def _find_image(image_dir: Path, image_id: str, by_stem: dict[str, list[str]]) -> list[str]:
    """Every file `image_id` can mean: [] none, [one] found, several: ambiguous."""
    direct = image_dir / image_id
    if direct.is_file():
        return [os.path.normpath(direct)]
    return by_stem.get(image_id, [])


def list_csv(
    csv_path: Path, image_dir: Path, id_column: str, target_column: str, drop_duplicate_ids: bool = False
) -> FileListing:
    if not image_dir.is_dir():
        raise DataError(f"image_dir: {image_dir} does not exist or is not a folder; allowed: the folder holding the images named in {csv_path.name}")
    rows = _read_rows(csv_path, id_column, target_column)
    if not rows:
        raise DataError(f"dataset: {csv_path} has a header but no rows")
    by_stem = _index_by_stem(image_dir)
    name = csv_path.name
    blank, ambiguous, absent, repeated, conflicting = [], [], [], [], []
    first: dict[str, tuple[int, str, str]] = {}  # image path -> (line, id, target) of its first row
    paths, targets = [], []
    for line, image_id, target in rows:
        if not image_id or not target:
            blank.append(f"line {line} ({id_column}={image_id!r}, {target_column}={target!r})")
            continue
        found = _find_image(image_dir, image_id, by_stem)
        if not found:
            absent.append(image_id)
            continue
        if len(found) > 1:
            ambiguous.append(f"line {line} ({image_id}: {', '.join(os.path.basename(f) for f in found)})")
            continue
        path = found[0]
        if path in first:
            line0, id0, target0 = first[path]
            where = f"line {line} ({image_id}, first on line {line0}" + ("" if id0 == image_id else f" as {id0}")
            if target0 == target:
                repeated.append(where + ")")
            else:
                conflicting.append(where + f"; labels {target0!r} and {target!r})")
            continue
        first[path] = (line, image_id, target)
        paths.append(path)
        targets.append(target)
    problems = []
    if blank:
        problems.append(
            f"dataset: {len(blank)} row(s) of {name} have an empty {id_column} or {target_column}: {_few(blank)}; "
            f"allowed: an image id and a class name in every row (label or remove those rows)"
        )
    if absent:
        problems.append(
            f"dataset: {len(absent)} id(s) in {name} have no image in {image_dir}: "
            f"{_few(absent)}; allowed: each id is a file name in image_dir, with or without its suffix"
        )
    if ambiguous:
        problems.append(
            f"dataset: {len(ambiguous)} id(s) in {name} match more than one image in {image_dir}: {_few(ambiguous)}; "
            f"allowed: an id that names one file (write its suffix, e.g. img_0001.png, or remove the other file)"
        )
    if conflicting:
        problems.append(
            f"dataset: {len(conflicting)} row(s) of {name} list an image again with another label: {_few(conflicting)}; "
            f"allowed: one label per image (fix {name}; drop_duplicate_ids drops only repeats with the same label)"
        )
    if repeated and not drop_duplicate_ids:
        problems.append(
            f"dataset: {len(repeated)} row(s) of {name} list an image already listed: {_few(repeated)}; "
            f"one image listed twice can land in both the training and the validation split; "
            f"allowed: each image once (remove the repeats, or set drop_duplicate_ids: true to keep the first row of each)"
        )
    if problems:
        raise DataError("\n".join(problems))
    if repeated:
        log.warning("dataset: dropped %d repeated row(s) of %s (drop_duplicate_ids): %s", len(repeated), name, _few(repeated))
    classes = _sorted_classes(targets)
    if len(classes) < 2:
        raise DataError(f"dataset: {csv_path} has only one class ({classes[0]}) in column {target_column!r}; allowed: at least 2")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[t] for t in targets], dtype=np.int64)
    return FileListing(image_dir, paths, labels, classes, "csv", _stat(paths, image_dir))


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def list_files(spec: DataSpec) -> FileListing:
    """List and check a user dataset (folder or CSV) named by spec.dataset."""
    path = Path(spec.dataset).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset: {spec.dataset!r} does not exist; allowed: {' | '.join(BUILTIN)}, a folder with one "
            f"sub-folder per class, or a CSV of id,target rows (with image_dir)"
            + did_you_mean(spec.dataset, BUILTIN)
        )
    if path.is_dir():
        return list_folder(path)
    if path.suffix.lower() == ".csv":
        image_dir = Path(spec.image_dir).expanduser() if spec.image_dir else path.parent
        return list_csv(path, image_dir, spec.id_column, spec.target_column, spec.drop_duplicate_ids)
    raise DataError(f"dataset: {path} is a file but not a .csv; allowed: a folder of class sub-folders or a CSV file")


def digits_images(img_size: int, resize: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images), as RGB uint8."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from tunewise.data.decode import resize_square

    digits = load_digits()
    gray = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.empty((len(gray), 3, img_size, img_size), dtype=np.uint8)
    for i, g in enumerate(gray):
        out[i] = np.asarray(resize_square(Image.fromarray(g).convert("RGB"), img_size, resize)).transpose(2, 0, 1)
    return out, digits.target.astype(np.int64), [str(c) for c in digits.target_names]


def synthetic_images(
    n: int, n_classes: int, img_size: int, noise: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A learnable but not trivial image-classification set of any size.

    Each class is an oriented stripe texture with its own angle, frequency and colour
    tint; every image jitters those (neighbouring classes overlap), adds a random
    phase, a random gradient background, a distracting blob and pixel noise.
    """
    rng = np.random.default_rng(seed)
    angles = np.pi * np.arange(n_classes) / n_classes + rng.uniform(0, np.pi / n_classes)
    freqs = rng.uniform(1.5, 4.0, n_classes)  # stripe periods per image side
    tints = rng.uniform(0.2, 1.0, (n_classes, 3))
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, img_size), np.linspace(-0.5, 0.5, img_size), indexing="ij")
    out = np.empty((n, 3, img_size, img_size), dtype=np.uint8)
    step = 512  # bounded memory at any n
    for a in range(0, n, step):
        y = labels[a : a + step]
        m = len(y)
        theta = angles[y] + rng.normal(0, 0.6 * np.pi / n_classes, m)
        freq = freqs[y] * rng.uniform(0.85, 1.15, m)
        phase = rng.uniform(0, 2 * np.pi, m)
        proj = xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None]
        stripes = np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
        tint = np.clip(tints[y] + rng.normal(0, 0.15, (m, 3)), 0, 1)
        img = 0.5 + 0.3 * stripes[:, None] * tint[:, :, None, None]
        grad = rng.normal(0, 0.15, (m, 3, 1, 1)) * (xx + yy)[None, None]
        cy, cx = rng.uniform(-0.5, 0.5, (2, m))
        blob = np.exp(-(((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 0.02))
        img = img + grad + rng.uniform(-0.4, 0.4, (m, 3, 1, 1)) * blob[:, None]
        img = img + rng.normal(0, noise * 0.3, img.shape)
        out[a : a + m] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out, labels.astype(np.int64), [f"class_{c}" for c in range(n_classes)]
