"""Load a dataset once, reuse it in every trial.

Decoded images live as one uint8 tensor (N, 3, H, W) plus int64 labels:
- in memory for the life of the process, keyed by fingerprint, so every trial of a
  study shares one copy (`load_images` returns the same object each time);
- on disk under `cache_dir/<fingerprint>/`, so a new process memory-maps the array
  instead of decoding again. The key is the dataset's content fingerprint
  (`fingerprint.py`: names, sizes, content hashes, labels, preprocessing settings),
  the same one a study records: a copy of the files finds the entry, a changed file
  or setting is a new entry.
  A checksum written with the entry catches truncated or corrupt files, which are
  rebuilt rather than trusted.
On CUDA, `ImageData.on(device)` keeps one copy on the GPU, where batches are sliced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunewise.data import fingerprint as fp
from tunewise.atomic import is_disk_full
from tunewise.data import sources
from tunewise.data.decode import decode_files
from tunewise.errors import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the on-disk layout or decoding changes
_MEMORY: dict[str, "ImageData"] = {}


def default_cache_dir() -> Path:
    env = os.environ.get("TUNEWISE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunewise"


@dataclass
class ImageData:
    """A decoded dataset: the tensors every trial shares, and where they came from."""

    images: torch.Tensor  # uint8 (N, 3, H, W), CPU; memory-mapped when loaded from disk
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    fingerprint: str
    description: str
    skipped: list[str] = field(default_factory=list)  # bad files left out (skip_bad_images)
    origin: str = "decoded"  # decoded | disk | memory: how this process got it
    loaded: str = "decoded"  # decoded | disk: how it first came into this process
    load_seconds: float = 0.0  # listing, fingerprint and decode or cache read, that first time
    source: str = ""  # the dataset as named (digits, a folder, a CSV)
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.classes, counts))

    def on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) on `device`, copied there once per process."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.images, self.labels
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self.images.to(device, non_blocking=True), self.labels.to(device))
        return self._on_device[key]


def _preprocessing(spec: sources.DataSpec) -> dict:
    return {"img_size": spec.img_size, "resize": spec.resize, "skip_bad_images": spec.skip_bad_images, "format": CACHE_FORMAT}


def fingerprint_builtin(spec: sources.DataSpec) -> fp.Fingerprint:
    import sklearn

    payload = {"source": spec.dataset, **_preprocessing(spec)}
    if spec.dataset == "digits":
        payload["sklearn"] = sklearn.__version__
    else:
        payload.update(n=spec.synthetic_samples, classes=spec.synthetic_classes, noise=spec.synthetic_noise, seed=spec.synthetic_seed)
    return fp.of_settings(payload)


def fingerprint_files(listing: sources.FileListing, spec: sources.DataSpec, cache_dir: str | Path | None = None) -> fp.Fingerprint:
    """The content fingerprint (mtimes only say which hashes to recompute)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return fp.of_files(listing.root, listing.paths, listing.stats, listing.labels, listing.classes, _preprocessing(spec), root)


def describe_difference(old_fingerprint: str, new_fingerprint: str, cache_dir: str | Path | None = None) -> str | None:
    """What differs between the data behind two fingerprints, in one line, from the
    manifests `load_images` keeps in the cache folder; None when one of them is not on
    this machine (then say only that the data differ).

    >>> describe_difference(study_fingerprint, data.fingerprint)  # doctest: +SKIP
    "files changed: 1 (dog/dog_000.png); files added: 2 (cat/new_1.png, cat/new_2.png); labels changed: 1 (x.png: 'cat' -> 'dog')"
    """
    return fp.describe_difference(old_fingerprint, new_fingerprint, Path(cache_dir) if cache_dir else default_cache_dir())


# ---- the on-disk entry: images.npy, labels.npy, then meta.json last ----

def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_entry(root: Path, data: ImageData) -> None:
    """Write to a temporary folder, then rename it into place: readers never see half an
    entry. A full disk leaves no entry and a warning: the run goes on from memory (the
    cache only saves decoding next time; the journal, which must be written, says so
    itself if the same disk is full)."""
    tmp = root / f".{data.fingerprint}.tmp-{os.getpid()}"
    try:
        _write_entry_in(root, tmp, data)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # numpy reports a short write (no room) as "N requested and M written", no errno.
        if not (is_disk_full(exc) or (exc.errno is None and " requested and " in str(exc))):
            raise
        log.warning("disk cache not written to %s: the disk is full (%s); decoded images are kept in memory "
                    "for this run only", root, exc.strerror or exc)


def _write_entry_in(root: Path, tmp: Path, data: ImageData) -> None:
    final = root / data.fingerprint
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "images.npy", data.images.numpy())
    np.save(tmp / "labels.npy", data.labels.numpy())
    meta = {
        "format": CACHE_FORMAT,
        "shape": list(data.images.shape),
        "classes": data.classes,
        "description": data.description,
        "skipped": data.skipped,
        "crc_images": _crc(tmp / "images.npy"),
        "crc_labels": _crc(tmp / "labels.npy"),
        "created": time.time(),
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)  # a corrupt entry being replaced
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race with an identical entry
        shutil.rmtree(tmp, ignore_errors=True)


def _read_entry(root: Path, fingerprint: str) -> ImageData | None:
    """The cached entry, or None if absent; a damaged entry is logged, removed and None."""
    entry = root / fingerprint
    if not (entry / "meta.json").exists():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {meta.get('format')} != {CACHE_FORMAT}")
        if _crc(entry / "images.npy") != meta["crc_images"] or _crc(entry / "labels.npy") != meta["crc_labels"]:
            raise ValueError("checksum mismatch")
        # Copy-on-write map: no decode, no copy, pages come from the OS cache, and
        # torch gets a writable view without touching the file.
        images = np.load(entry / "images.npy", mmap_mode="c")
        labels = np.load(entry / "labels.npy")
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8 or len(labels) != images.shape[0]:
            raise ValueError(f"shape {images.shape} does not match {meta['shape']}")
    except (OSError, ValueError, KeyError, EOFError) as exc:
        log.warning("cache entry %s is damaged (%s); rebuilding it", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return ImageData(
        torch.from_numpy(images), torch.from_numpy(labels), meta["classes"], fingerprint,
        meta["description"], meta["skipped"], origin="disk",
    )


def _decode_listing(listing: sources.FileListing, spec: sources.DataSpec, fingerprint: str, workers: int | None) -> ImageData:
    images, bad = decode_files(listing.paths, spec.img_size, spec.resize, workers)
    skipped = []
    if bad:
        described = [f"{listing.paths[i]} ({err})" for i, err in sorted(bad.items())]
        if not spec.skip_bad_images:
            raise DataError(
                f"dataset: {len(bad)} unreadable image(s): {sources._few(described)}; "
                "fix or remove them, or set skip_bad_images: true to leave them out with a warning"
            )
        log.warning("skipping %d unreadable image(s): %s", len(bad), sources._few(described))
        keep = np.setdiff1d(np.arange(len(listing.paths)), np.fromiter(bad, dtype=np.int64))
        images, skipped = images[keep], [listing.paths[i] for i in sorted(bad)]
        listing.labels = listing.labels[keep]
    desc = _description(listing, len(listing.labels), spec)
    return ImageData(torch.from_numpy(images), torch.from_numpy(listing.labels), listing.classes, fingerprint, desc, skipped)


def _description(listing: sources.FileListing, n_images: int, spec: sources.DataSpec) -> str:
    return f"{listing.kind} {listing.root} ({n_images} images, {len(listing.classes)} classes, {spec.img_size}px)"


def _build_builtin(spec: sources.DataSpec, fingerprint: str) -> ImageData:
    if spec.dataset == "digits":
        images, labels, classes = sources.digits_images(spec.img_size, spec.resize)
    else:
        images, labels, classes = sources.synthetic_images(
            spec.synthetic_samples, spec.synthetic_classes, spec.img_size, spec.synthetic_noise, spec.synthetic_seed
        )
    desc = f"{spec.dataset} ({len(labels)} images, {len(classes)} classes, {spec.img_size}px)"
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, fingerprint, desc)


def load_images(
    spec: sources.DataSpec, cache_dir: str | Path | None = None, *, use_disk: bool = True, workers: int | None = None
) -> ImageData:
    """The decoded dataset for `spec`: from this process's memory, else the disk cache,
    else decoded now (with every core) and written to the disk cache."""
    spec.check()
    started = time.perf_counter()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec.dataset in sources.BUILTIN:
        listing, identity = None, fingerprint_builtin(spec)
    else:
        listing = sources.list_files(spec)
        identity = fingerprint_files(listing, spec, root)
    fingerprint = identity.value
    if fingerprint in _MEMORY:
        data = _MEMORY[fingerprint]
        data.origin, data.source = "memory", spec.dataset
        if use_disk:
            identity.save(root)  # hashes of files touched since (same content)
        return data
    data = _read_entry(root, fingerprint) if use_disk else None
    if data is not None and listing is not None:
        data.description = _description(listing, len(data), spec)  # a copy of the files is named as itself
    if data is None:
        data = _build_builtin(spec, fingerprint) if listing is None else _decode_listing(listing, spec, fingerprint, workers)
        if use_disk:
            _write_entry(root, data)
    if use_disk:
        identity.save(root)  # only now: a refused dataset leaves the cache folder untouched
    data.loaded, data.load_seconds, data.source = data.origin, time.perf_counter() - started, spec.dataset
    _MEMORY[fingerprint] = data
    return data


def clear_memory() -> None:
    """Forget the in-process copies and the lines already printed (tests, or to free
    memory between studies)."""
    _MEMORY.clear()
    _ANNOUNCED.clear()
    sources._WARNED.clear()


def describe(data: ImageData) -> dict:
    """A JSON-friendly summary for study records and notebooks."""
    return {
        "fingerprint": data.fingerprint,
        "description": data.description,
        "n_images": len(data),
        "classes": data.num_classes,
        "class_counts": data.class_counts(),
        "img_size": int(data.images.shape[-1]),
        "skipped": len(data.skipped),
    }


def describe_line(data: ImageData) -> str:
    """One line of what was loaded, e.g.
    data: digits, 1,797 images, 10 classes (smallest '8' 174, largest '3' 183), 32 px, from the disk cache (0.1 s)"""
    counts = data.class_counts()
    smallest = min(counts, key=counts.get)
    largest = max(counts, key=counts.get)
    how = {"decoded": "decoded", "disk": "from the disk cache"}.get(data.loaded, data.loaded)
    skipped = f", {len(data.skipped):,} unreadable skipped" if data.skipped else ""
    source = f"{data.source}, " if data.source else ""
    return (
        f"data: {source}{len(data):,} images, {data.num_classes} classes (smallest {smallest!r} {counts[smallest]:,}, "
        f"largest {largest!r} {counts[largest]:,}), {int(data.images.shape[-1])} px{skipped}, {how} ({data.load_seconds:.1f} s)"
    )


_ANNOUNCED: set[str] = set()


def announce(data: ImageData) -> None:
    """Print `describe_line(data)` the first time this process uses this data."""
    if data.fingerprint not in _ANNOUNCED:
        _ANNOUNCED.add(data.fingerprint)
        print(describe_line(data), flush=True)


__all__ = ["ImageData", "load_images", "clear_memory", "default_cache_dir", "describe", "describe_line", "announce",
           "describe_difference"]
