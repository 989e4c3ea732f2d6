"""Every dataset source, decoding of odd image modes, and the bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tunewise.data import cache, decode
from tunewise.errors import ConfigError, DataError
from tunewise.data.sources import DataSpec, synthetic_images
from tunewise.data.splits import kfold_splits, train_val_split

from pngdata import write_png_folder


def test_digits_are_real_rgb_uint8():
    data = cache.load_images(DataSpec("digits", img_size=16))
    assert tuple(data.images.shape) == (1797, 3, 16, 16)
    assert data.images.dtype.is_floating_point is False and str(data.images.dtype) == "torch.uint8"
    assert data.num_classes == 10 and sum(data.class_counts().values()) == 1797
    # grayscale source: the three channels are equal, and the digits have ink
    assert bool((data.images[:, 0] == data.images[:, 2]).all())
    assert int(data.images.max()) > 200


def test_synthetic_is_deterministic_balanced_and_not_linearly_trivial():
    a, ya, classes = synthetic_images(600, 6, 16, seed=3)
    b, yb, _ = synthetic_images(600, 6, 16, seed=3)
    c, _, _ = synthetic_images(600, 6, 16, seed=4)
    assert np.array_equal(a, b) and np.array_equal(ya, yb) and not np.array_equal(a, c)
    assert a.shape == (600, 3, 16, 16) and len(classes) == 6
    assert np.bincount(ya).tolist() == [100] * 6
    # Not trivial: a nearest-class-mean classifier on raw pixels stays far from perfect.
    x = a.reshape(len(a), -1).astype(np.float32)
    means = np.stack([x[ya == k][:50].mean(0) for k in range(6)])
    test = np.concatenate([np.where(ya == k)[0][50:] for k in range(6)])
    pred = np.argmin(((x[test, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == ya[test]).mean() < 0.8


def test_folder_source_mixed_sizes_and_modes(tmp_path):
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("L", (10, 30), 128).save(root / "a" / "gray.png")
    Image.new("RGB", (50, 20), (255, 0, 0)).save(root / "a" / "photo.jpg")
    pal = Image.new("P", (16, 16))
    pal.putpalette([0, 0, 255] * 256)
    pal.save(root / "b" / "palette.gif")
    Image.new("RGBA", (12, 12), (0, 0, 0, 0)).save(root / "b" / "clear.png")  # fully transparent
    data = cache.load_images(DataSpec(str(root), img_size=8))
    assert tuple(data.images.shape) == (4, 3, 8, 8) and data.classes == ["a", "b"]
    by_name = dict(zip(["gray", "photo", "clear", "palette"], data.images))  # sorted per class
    assert by_name["gray"].float().std() == 0 and int(by_name["gray"][0, 0, 0]) == 128
    assert int(by_name["photo"][0].float().mean()) > 240 and int(by_name["photo"][1].float().mean()) < 15
    assert int(by_name["palette"][2, 0, 0]) == 255
    assert bool((by_name["clear"] == 255).all())  # transparency over white, not black


def test_csv_source_with_and_without_suffixes(tmp_path, png_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["id,target"]
    for i, p in enumerate(sorted(png_folder.rglob("*.png"))):
        (flat / p.name).write_bytes(p.read_bytes())
        rows.append(f"{p.stem if i % 2 else p.name},{p.parent.name}")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    data = cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8))
    assert len(data) == 36 and data.classes == ["cat", "dog", "fox"]
    assert data.class_counts() == {"cat": 12, "dog": 12, "fox": 12}


def test_csv_errors_name_columns_and_missing_ids(tmp_path, png_folder):
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("image,label\nx,1\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) id, target; it has: image, label"):
        cache.load_images(DataSpec(str(bad_cols), image_dir=str(png_folder / "cat")))
    missing = tmp_path / "missing.csv"
    missing.write_text("id,target\ncat_000,a\nnope_1,b\nnope_2,b\n")
    with pytest.raises(DataError, match=r"2 id\(s\) in missing.csv have no image in .*: nope_1, nope_2"):
        cache.load_images(DataSpec(str(missing), image_dir=str(png_folder / "cat")))


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"dataset: '.*nowhere' does not exist; allowed: digits \| synthetic"):
        cache.load_images(DataSpec(str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match=r"did you mean 'digits'"):
        cache.load_images(DataSpec("digts"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    with pytest.raises(DataError, match=r"has no class sub-folders \(found loose images such as x.png\)"):
        cache.load_images(DataSpec(str(flat)))
    one = write_png_folder(tmp_path / "one", classes=("only",), n_per_class=3)
    with pytest.raises(DataError, match=r"has only one class \(only\); allowed: at least 2"):
        cache.load_images(DataSpec(str(one)))
    (one / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) with no images .*: empty"):
        cache.load_images(DataSpec(str(one)))


def test_class_too_small_to_split(tmp_path):
    root = write_png_folder(tmp_path / "small", classes=("a", "b"), n_per_class=6)
    for p in list((root / "b").iterdir())[1:]:
        p.unlink()
    data = cache.load_images(DataSpec(str(root), img_size=8))
    with pytest.raises(DataError, match=r"too few images to split .*: b \(1\); allowed: at least 2"):
        train_val_split(data.labels.numpy(), data.classes)


def test_corrupt_images_are_listed_or_skipped(tmp_path, png_folder, caplog):
    (png_folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (png_folder / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 unreadable image\(s\): .*broken.png .*empty.jpg .*skip_bad_images"):
        cache.load_images(DataSpec(str(png_folder), img_size=8))
    assert not any(cache.default_cache_dir().glob("*")), "nothing may be written for a refused dataset"
    data = cache.load_images(DataSpec(str(png_folder), img_size=8, skip_bad_images=True))
    assert len(data) == 36 and len(data.skipped) == 2
    assert "skipping 2 unreadable image(s)" in caplog.text


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"img_size: 4 is out of range; allowed: an integer from 8 to 1024"):
        cache.load_images(DataSpec("digits", img_size=4))
    with pytest.raises(ConfigError, match=r"resize: 'crp' is not allowed; allowed: squash, crop \(did you mean 'crop'\?\)"):
        cache.load_images(DataSpec("digits", resize="crp"))


def test_parallel_decode_matches_serial(png_folder):
    paths = sorted(str(p) for p in png_folder.rglob("*.png")) * 3  # 108 files: takes the pool path
    serial, bad_s = decode.decode_files(paths, 12, workers=1)
    parallel, bad_p = decode.decode_files(paths, 12, workers=2)
    assert not bad_s and not bad_p
    assert np.array_equal(serial, parallel)


def test_stratified_split_and_folds():
    labels = np.repeat(np.arange(4), 25)
    classes = list("abcd")
    tr, va = train_val_split(labels, classes, 0.2, seed=1)
    assert len(va) == 20 and np.bincount(labels[va]).tolist() == [5] * 4
    assert not set(tr) & set(va) and len(tr) + len(va) == 100
    tr2, va2 = train_val_split(labels, classes, 0.2, seed=2)
    assert not np.array_equal(va, va2)
    folds = kfold_splits(labels, classes, k=5, seed=0)
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(100))
    with pytest.raises(ConfigError, match="val_fraction: 1.5 is out of range"):
        train_val_split(labels, classes, 1.5)
