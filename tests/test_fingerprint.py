"""Data identity by content (issue 20): a copy with new mtimes is the same data, a changed
byte is not and is named, and unchanged files are not read again (the hash index)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tunewise.data import cache, fingerprint
from tunewise.data.sources import DataSpec

HOUR_NS = 3600 * 1_000_000_000


def age(root, ns=HOUR_NS):
    """Give every file an mtime `ns` in the past (a dataset is rarely written seconds ago)."""
    when = time.time_ns() - ns
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(when, when))


@pytest.fixture
def hash_reads(monkeypatch):
    """The files read for hashing, in order."""
    read = []
    real = fingerprint.hash_file

    def counting(path):
        read.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(fingerprint, "hash_file", counting)
    return read


def test_a_copy_with_new_mtimes_is_the_same_data(tmp_path, png_folder):
    original = cache.load_images(DataSpec(str(png_folder), img_size=8))
    copy = shutil.copytree(png_folder, tmp_path / "elsewhere" / "images")  # cp -r: same bytes, new mtimes
    later = time.time_ns() + 7 * HOUR_NS
    for p in copy.rglob("*.png"):
        os.utime(p, ns=(later, later))
    cache.clear_memory()
    copied = cache.load_images(DataSpec(str(copy), img_size=8))
    assert copied.fingerprint == original.fingerprint
    assert copied.origin == "disk"  # the decoded entry is found by content too: no second decode
    assert str(copy) in copied.description
    assert cache.describe_difference(original.fingerprint, copied.fingerprint) == "the same data"


def test_a_changed_byte_is_another_dataset_and_is_named(png_folder):
    spec = DataSpec(str(png_folder), img_size=8)
    before = cache.load_images(spec).fingerprint
    target = png_folder / "dog" / "dog_004.png"
    raw = bytearray(target.read_bytes())
    raw[-13] ^= 0x01  # same size, one byte
    target.write_bytes(bytes(raw))
    (png_folder / "cat" / "cat_000.png").unlink()
    shutil.copy(png_folder / "fox" / "fox_000.png", png_folder / "fox" / "fox_new.png")
    after = cache.load_images(spec).fingerprint
    assert after != before
    assert cache.describe_difference(before, after) == (
        "files added: 1 (fox/fox_new.png); files removed: 1 (cat/cat_000.png); files changed: 1 (dog/dog_004.png)")
    assert cache.describe_difference(before, cache.load_images(DataSpec(str(png_folder), img_size=16)).fingerprint) \
        == "img_size: 8 -> 16; files added: 1 (fox/fox_new.png); files removed: 1 (cat/cat_000.png); files changed: 1 (dog/dog_004.png)"


def test_changed_labels_are_named(tmp_path, png_folder):
    rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(png_folder.rglob("*.png"))]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,target\n" + "\n".join(rows) + "\n")
    before = cache.load_images(DataSpec(str(csv_path), image_dir=str(png_folder), img_size=8)).fingerprint
    rows[0] = "cat/cat_000.png,dog"
    csv_path.write_text("id,target\n" + "\n".join(rows) + "\n")
    after = cache.load_images(DataSpec(str(csv_path), image_dir=str(png_folder), img_size=8)).fingerprint
    assert after != before
    assert cache.describe_difference(before, after) == "labels changed: 1 (cat/cat_000.png: 'cat' -> 'dog')"


def test_difference_unknown_without_the_old_manifest(png_folder, tmp_path):
    new = cache.load_images(DataSpec(str(png_folder), img_size=8)).fingerprint
    assert cache.describe_difference("0123456789abcdef0123", new) is None  # recorded on another machine
    other = cache.load_images(DataSpec(str(png_folder), img_size=16)).fingerprint
    assert cache.describe_difference(new, other) == "img_size: 8 -> 16"
    assert cache.describe_difference(new, other, cache_dir=tmp_path / "another-cache") is None


def test_builtin_settings_are_named():
    a = cache.load_images(DataSpec("synthetic", img_size=8, synthetic_samples=40, synthetic_classes=4)).fingerprint
    b = cache.load_images(DataSpec("synthetic", img_size=8, synthetic_samples=60, synthetic_classes=4)).fingerprint
    assert cache.describe_difference(a, b) == "n: 40 -> 60"


def test_unchanged_files_are_not_read_again(png_folder, hash_reads):
    age(png_folder)
    spec = DataSpec(str(png_folder), img_size=8)
    first = cache.load_images(spec).fingerprint
    assert len(hash_reads) == 36
    cache.clear_memory()
    hash_reads.clear()
    assert cache.load_images(spec).fingerprint == first and hash_reads == []  # a new run: stat only
    # A new mtime is a reason to look again, not a new dataset.
    target = png_folder / "dog" / "dog_002.png"
    when = time.time_ns() - HOUR_NS // 2
    os.utime(target, ns=(when, when))
    assert cache.load_images(spec).fingerprint == first and hash_reads == ["dog_002.png"]
    hash_reads.clear()
    assert cache.load_images(spec).fingerprint == first and hash_reads == []


def test_files_written_just_now_are_hashed_again(png_folder, hash_reads):
    """A hash taken within a mtime tick of the last write may go stale without the mtime
    moving: used for this run, not kept."""
    spec = DataSpec(str(png_folder), img_size=8)
    cache.load_images(spec)
    cache.clear_memory()
    hash_reads.clear()
    cache.load_images(spec)
    assert len(hash_reads) == 36


def test_a_refused_dataset_keeps_no_hashes(png_folder):
    age(png_folder)
    (png_folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(Exception, match="unreadable"):
        cache.load_images(DataSpec(str(png_folder), img_size=8))
    assert not cache.default_cache_dir().exists() or not any(cache.default_cache_dir().rglob("*"))
