"""The cache: one copy per process, a memory-mapped disk entry, fingerprints, integrity."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tunewise.data import cache, fingerprint
from tunewise.data.sources import DataSpec


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although a cache entry existed")

    monkeypatch.setattr(cache, "decode_files", refuse)


def test_memory_then_disk_without_redecoding(png_folder, monkeypatch):
    spec = DataSpec(str(png_folder), img_size=8)
    first = cache.load_images(spec)
    assert first.origin == "decoded"
    assert cache.load_images(spec) is first  # every trial shares this one object
    cache.clear_memory()
    _no_decoding(monkeypatch)
    again = cache.load_images(spec)
    assert again.origin == "disk"
    assert again.fingerprint == first.fingerprint
    assert np.array_equal(again.images.numpy(), first.images.numpy())
    assert np.array_equal(again.labels.numpy(), first.labels.numpy())
    # memory-mapped, not read into a private copy: the file is mapped into this process
    images_file = str(cache.default_cache_dir() / first.fingerprint / "images.npy")
    with open("/proc/self/maps") as maps:
        assert images_file in maps.read()


def test_fingerprint_follows_files_and_settings(png_folder):
    spec = DataSpec(str(png_folder), img_size=8)
    fp = cache.load_images(spec).fingerprint
    assert cache.load_images(DataSpec(str(png_folder), img_size=16)).fingerprint != fp
    assert cache.load_images(DataSpec(str(png_folder), img_size=8, resize="crop")).fingerprint != fp
    target = png_folder / "dog" / "dog_000.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    # A new mtime alone is the same data (issue 20): the content decides.
    assert cache.load_images(spec).fingerprint == fp
    raw = bytearray(target.read_bytes())
    raw[-13] ^= 0x01  # inside the PNG's IEND CRC: same size, another byte
    target.write_bytes(bytes(raw))
    changed = cache.load_images(spec)
    assert changed.fingerprint != fp and changed.origin == "decoded"
    (png_folder / "dog" / "dog_001.png").unlink()
    fewer = cache.load_images(spec)
    assert fewer.fingerprint not in (fp, changed.fingerprint) and len(fewer) == 35


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "bad_meta"])
def test_damaged_entry_is_detected_and_rebuilt(png_folder, damage, caplog):
    spec = DataSpec(str(png_folder), img_size=8)
    original = cache.load_images(spec)
    entry = cache.default_cache_dir() / original.fingerprint
    images = entry / "images.npy"
    if damage == "truncate":
        with open(images, "r+b") as fh:
            fh.truncate(images.stat().st_size // 2)
    elif damage == "flip_byte":
        raw = bytearray(images.read_bytes())
        raw[-10] ^= 0xFF
        images.write_bytes(bytes(raw))
    else:
        (entry / "meta.json").write_text("{not json")
    cache.clear_memory()
    rebuilt = cache.load_images(spec)
    assert rebuilt.origin == "decoded"
    assert "is damaged" in caplog.text and "rebuilding" in caplog.text
    assert np.array_equal(rebuilt.images.numpy(), original.images.numpy())
    cache.clear_memory()
    assert cache.load_images(spec).origin == "disk"  # the rebuilt entry is sound


def test_no_half_written_entries_left(png_folder):
    cache.load_images(DataSpec(str(png_folder), img_size=8))
    # index/ holds the content hashes and manifests (fingerprint.py), not decoded entries
    names = [p.name for p in cache.default_cache_dir().iterdir() if p.name != fingerprint.INDEX_DIR]
    assert len(names) == 1 and not names[0].startswith(".")
    assert sorted(p.name for p in (cache.default_cache_dir() / names[0]).iterdir()) == ["images.npy", "labels.npy", "meta.json"]
