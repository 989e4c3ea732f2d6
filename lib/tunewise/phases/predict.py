"""`tunewise predict`: class probabilities for a folder or CSV of images from one or more
exported model folders (several folders: their probabilities averaged, an ensemble).

The models are loaded the way a plain timm session loads them
(``timm.create_model("local-dir:DIR", pretrained=True)``) and the images are resized as the
training cache resized them (config.json's input size and crop mode), decoded in parallel
(data/decode.py) and run in batches on the GPU when there is one, normalised as in training
(train/infer.py). Every input is checked before any image is decoded and before anything is
written: a folder that is not a model folder, members with different classes or input
sizes, an empty image folder, a CSV id with no image, an unreadable image (named), an output
path that cannot be written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tunewise.atomic import write_text_atomic
from tunewise.data.decode import IMAGE_SUFFIXES, decode_files
from tunewise.errors import ConfigError, DataError
from tunewise.train.infer import probabilities
from tunewise.train.loop import resolve_device

MODEL_FILES = ("config.json", "model.safetensors")
RESIZE_OF_CROP_MODE = {"squash": "squash", "center": "crop"}  # timm's crop_mode -> tunewise's resize
PROGRESS_FROM = 2048  # print a progress line when predicting at least this many images
MAX_NAMED = 10


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    classes: tuple[str, ...]
    img_size: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Predictions:
    """One row per image, in the input's order: id, predicted label, a probability per class."""

    ids: list[str]
    classes: list[str]
    probs: np.ndarray  # (N, classes) float32

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.probs.argmax(1)]

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self) -> list[str]:
        # A class named "id" or "label" would clash with the first two columns: prefix those.
        return ["id", "label", *[f"p_{c}" if c in ("id", "label") else c for c in self.classes]]

    def rows(self) -> list[dict[str, Any]]:
        cols = self.columns()
        return [dict(zip(cols, [i, lab, *map(float, p)])) for i, lab, p in zip(self.ids, self.labels, self.probs)]

    def head(self, n: int = 10) -> "Predictions":
        return Predictions(self.ids[:n], self.classes, self.probs[:n])

    def to_dict(self, orient: str = "records") -> list[dict[str, Any]]:
        return self.rows()

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns())
        for i, lab, p in zip(self.ids, self.labels, self.probs):
            w.writerow([i, lab, *(repr(float(x)) for x in p)])
        return buf.getvalue()


# ---- the inputs, checked ------------------------------------------------------------------

def read_model_folder(path: str | Path) -> ModelFolder:
    path = Path(path).expanduser()
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.exists() else "is not a folder" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise ConfigError(f"MODEL_DIR: {path} {what}, so it is not a model folder; allowed: a folder the final "
                          "phase exported (model.safetensors + config.json, e.g. RUN/final/model)")
    try:
        cfg = json.loads((path / "config.json").read_text())
        pre = cfg["pretrained_cfg"]
        classes = tuple(str(c) for c in cfg["label_names"])
        size = tuple(int(x) for x in pre["input_size"])
        mean, std = tuple(float(x) for x in pre["mean"]), tuple(float(x) for x in pre["std"])
        crop_mode = pre.get("crop_mode", "squash")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"MODEL_DIR: {path / 'config.json'} is not a timm classifier config with label_names and "
                          f"pretrained_cfg input_size/mean/std ({type(exc).__name__}: {exc}); allowed: a folder the "
                          "final phase exported") from None
    if len(classes) != int(cfg.get("num_classes", len(classes))) or size[1] != size[2]:
        raise ConfigError(f"MODEL_DIR: {path / 'config.json'}: {len(classes)} label_names for num_classes "
                          f"{cfg.get('num_classes')}, input size {size}; allowed: one name per class, square input")
    if crop_mode not in RESIZE_OF_CROP_MODE:
        raise ConfigError(f"MODEL_DIR: {path / 'config.json'}: crop_mode {crop_mode!r}; allowed: "
                          f"{', '.join(RESIZE_OF_CROP_MODE)} (how tunewise resized the training images)")
    return ModelFolder(path, classes, size[1], RESIZE_OF_CROP_MODE[crop_mode], mean, std)


def check_members(folders: Sequence[ModelFolder]) -> None:
    """An ensemble averages probabilities class by class over the same pixels: its members
    must name the same classes in the same order and take the same input size and resize."""
    first = folders[0]
    for f in folders[1:]:
        if f.classes != first.classes:
            raise ConfigError(f"MODEL_DIR: {f.path} predicts classes {list(f.classes)}, {first.path} predicts "
                              f"{list(first.classes)}; allowed: ensemble members with the same classes in the same order")
        if (f.img_size, f.resize) != (first.img_size, first.resize):
            raise ConfigError(f"MODEL_DIR: {f.path} takes {f.img_size}-px images ({f.resize}), {first.path} takes "
                              f"{first.img_size}-px ({first.resize}); allowed: ensemble members with the same input size")


def list_images(images: str | Path, image_dir: str | Path | None = None, id_column: str = "id") -> tuple[list[str], list[str]]:
    """(ids, paths) in the input's order. A folder: every image in it (sub-folders too), by
    path, the id its path without suffix. A CSV: the order of its ids (a sample submission),
    each found in ``image_dir`` (default: the CSV's folder) with or without its suffix."""
    src = Path(images).expanduser()
    if src.is_dir():
        paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.name.startswith("."))
        if not paths:
            raise DataError(f"--images: folder {src} holds no images; allowed: a folder of image files "
                            f"({', '.join(IMAGE_SUFFIXES)}) or a CSV of ids")
        return [p.relative_to(src).with_suffix("").as_posix() for p in paths], [str(p) for p in paths]
    if src.is_file() and src.suffix.lower() == ".csv":
        return _list_csv(src, Path(image_dir).expanduser() if image_dir else src.parent, id_column)
    raise DataError(f"--images: {src} " + ("does not exist" if not src.exists() else "is neither a folder nor a .csv")
                    + "; allowed: a folder of images, or a CSV whose id column names them")


def _list_csv(path: Path, folder: Path, id_column: str) -> tuple[list[str], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            column = id_column if id_column in header else (header[0] if header else None)
            ids = [r[column].strip() for r in reader] if column else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"--images: {path} could not be read as a CSV ({type(exc).__name__}: {exc})") from None
    if not ids:
        raise DataError(f"--images: {path} has no ids; allowed: a CSV with a header and one id per row")
    by_stem = {p.stem: str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES} \
        if folder.is_dir() else {}
    paths, absent = [], []
    for image_id in ids:
        direct = folder / image_id
        found = str(direct) if direct.is_file() else by_stem.get(image_id)
        (paths.append(found) if found else absent.append(image_id))
    if absent:
        raise DataError(f"--images: {len(absent)} id(s) in {path.name} have no image in {folder}: "
                        f"{', '.join(absent[:MAX_NAMED])}{' ...' if len(absent) > MAX_NAMED else ''}; "
                        "allowed: ids that are file names there, with or without the suffix")
    return ids, paths


def check_output(out: str | Path) -> Path:
    """The output can be written: its folder exists and is writable, and it is not a folder."""
    out = Path(out).expanduser()
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; allowed: a file path such as predictions.csv")
    if not parent.is_dir():
        raise ConfigError(f"--out: folder {parent} does not exist; allowed: a path in an existing folder")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"--out: {out} cannot be written (permission denied); allowed: a writable path")
    return out


# ---- predict ------------------------------------------------------------------------------

def predict(model_dirs: str | Path | Sequence[str | Path], images: str | Path, *, tta: bool = False,
            out: str | Path | None = None, device: str = "auto", batch_size: int = 256, workers: int | None = None,
            image_dir: str | Path | None = None, id_column: str = "id", progress: bool | None = None) -> Predictions:
    """Predict every image of ``images`` (a folder, or a CSV of ids) with the model folder(s);
    several folders average their probabilities. ``tta``: also the horizontally flipped image.
    ``out``: write the rows as CSV (atomically, after everything succeeded). ``progress``:
    a progress line on stderr (None: when there are PROGRESS_FROM images or more)."""
    import timm

    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    if not dirs:
        raise ConfigError("MODEL_DIR: none given; allowed: one or more folders the final phase exported")
    folders = [read_model_folder(d) for d in dirs]
    check_members(folders)
    ids, paths = list_images(images, image_dir, id_column)
    out_path = check_output(out) if out is not None else None
    dev = resolve_device(device)
    first = folders[0]
    decoded, bad = decode_files(paths, first.img_size, first.resize, workers)
    if bad:
        named = [f"{paths[i]} ({err})" for i, err in sorted(bad.items())]
        raise DataError(f"--images: {len(bad)} unreadable image(s): {'; '.join(named[:MAX_NAMED])}"
                        f"{' ...' if len(named) > MAX_NAMED else ''}; allowed: readable image files (fix or remove them)")
    show = len(ids) >= PROGRESS_FROM if progress is None else progress
    total = len(ids) * len(folders)
    done = [0, time.perf_counter()]

    def tick(n: int) -> None:
        done[0] += n
        if show and (time.perf_counter() - done[1] > 1 or done[0] == total):
            done[1] = time.perf_counter()
            print(f"\rpredict: {done[0]}/{total} images x models", end="\n" if done[0] == total else "",
                  file=sys.stderr, flush=True)

    tensor = torch.from_numpy(decoded)
    probs = None
    for f in folders:
        model = timm.create_model(f"local-dir:{f.path}", pretrained=True)
        p = probabilities([model], tensor, f.mean, f.std, tta=tta, device=dev, batch_size=batch_size, on_batch=tick)
        probs = p if probs is None else probs + p
    result = Predictions(ids, list(first.classes), (probs / len(folders)).numpy())
    if out_path is not None:
        write_text_atomic(out_path, result.to_csv_text())
    return result
