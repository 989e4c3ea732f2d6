"""Data quality: the CSV source refuses empty labels, repeated and ambiguous ids (naming
the rows), a dataset's root taken as classes gets a warning, and every run prints one
line of what was loaded."""

from __future__ import annotations

import logging
import re

import pytest
from PIL import Image

from tunewise import config as P
from tunewise.data import cache
from tunewise.data.sources import DataSpec
from tunewise.errors import ConfigError, DataError
from tunewise.phases import tuning

from pngdata import write_png_folder


@pytest.fixture
def flat(tmp_path, png_folder):
    """The png_folder's 36 images in one folder (cat_000.png ... fox_011.png), for CSVs."""
    out = tmp_path / "flat"
    out.mkdir()
    for p in sorted(png_folder.rglob("*.png")):
        (out / p.name).write_bytes(p.read_bytes())
    return out


def write_csv(path, rows, header="id,target"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def good_rows():
    return [f"{c}_{i:03d},{c}" for c in ("cat", "dog", "fox") for i in range(12)]


def test_empty_labels_and_short_rows_are_named(tmp_path, flat):
    rows = good_rows()
    rows[1] = "cat_001,"  # line 3: empty label
    rows[4] = "cat_004"  # line 6: no target field at all
    rows[7] = ",cat"  # line 9: empty id
    csv_path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DataError) as err:
        cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8))
    msg = str(err.value)
    assert "3 row(s) of train.csv have an empty id or target" in msg
    assert "line 3 (id='cat_001', target='')" in msg and "line 6 (id='cat_004', target='')" in msg
    assert "line 9 (id='', target='cat')" in msg
    assert "allowed: an image id and a class name in every row" in msg
    assert not any(cache.default_cache_dir().glob("*")), "nothing may be written for a refused dataset"


def test_repeated_ids_are_refused_or_dropped(tmp_path, flat, caplog):
    rows = good_rows() + ["cat_000,cat", "dog_003.png,dog"]  # lines 38, 39: cat_000 again, dog_003 by its file name
    csv_path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DataError) as err:
        cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8))
    msg = str(err.value)
    assert "2 row(s) of train.csv list an image already listed" in msg
    assert "line 38 (cat_000, first on line 2)" in msg
    assert "line 39 (dog_003.png, first on line 17 as dog_003)" in msg
    assert "training and the validation split" in msg and "set drop_duplicate_ids: true" in msg
    with caplog.at_level(logging.WARNING):
        data = cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8, drop_duplicate_ids=True))
    assert len(data) == 36 and data.class_counts() == {"cat": 12, "dog": 12, "fox": 12}
    assert "dropped 2 repeated row(s) of train.csv (drop_duplicate_ids): line 38" in caplog.text


def test_repeated_ids_with_another_label_are_refused_even_when_dropping(tmp_path, flat):
    csv_path = write_csv(tmp_path / "train.csv", good_rows() + ["cat_005,dog"])
    for drop in (False, True):
        with pytest.raises(DataError, match=r"1 row\(s\) of train.csv list an image again with another label: "
                                            r"line 38 \(cat_005, first on line 7; labels 'cat' and 'dog'\)"):
            cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8, drop_duplicate_ids=drop))


def test_many_repeats_are_counted_and_the_first_few_named(tmp_path, flat):
    csv_path = write_csv(tmp_path / "train.csv", good_rows() + good_rows()[:12])
    with pytest.raises(DataError, match=r"12 row\(s\) of train.csv list an image already listed: "
                                        r"line 38 \(cat_000, first on line 2\), .* \.\.\. and 2 more;"):
        cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8))


def test_an_id_matching_two_files_is_refused(tmp_path, flat):
    Image.new("RGB", (8, 8)).save(flat / "cat_002.jpg")  # beside cat_002.png
    csv_path = write_csv(tmp_path / "train.csv", good_rows())
    with pytest.raises(DataError, match=r"1 id\(s\) in train.csv match more than one image in .*flat: "
                                        r"line 4 \(cat_002: cat_002.jpg, cat_002.png\); allowed: an id that names one file"):
        cache.load_images(DataSpec(str(csv_path), image_dir=str(flat), img_size=8))
    rows = good_rows()
    rows[2] = "cat_002.png,cat"  # with its suffix the id names one file
    data = cache.load_images(DataSpec(str(write_csv(tmp_path / "fixed.csv", rows)), image_dir=str(flat), img_size=8))
    assert len(data) == 36


def test_every_csv_problem_in_one_message(tmp_path, flat):
    Image.new("RGB", (8, 8)).save(flat / "cat_002.jpg")
    rows = good_rows() + ["nope_1,cat", "fox_000,fox"]
    rows[0] = "cat_000,"
    with pytest.raises(DataError) as err:
        cache.load_images(DataSpec(str(write_csv(tmp_path / "train.csv", rows)), image_dir=str(flat), img_size=8))
    lines = str(err.value).splitlines()
    assert len(lines) == 4
    assert [re.search(r"have an empty|have no image|more than one image|already listed", x).group() for x in lines] == [
        "have an empty", "have no image", "more than one image", "already listed"]


def test_unreadable_csv_and_bad_flag(tmp_path, flat):
    bad = tmp_path / "latin.csv"
    bad.write_bytes("id,target\ncat_000,ch\xe2t\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv cannot be read as a CSV .*allowed: UTF-8 text"):
        cache.load_images(DataSpec(str(bad), image_dir=str(flat)))
    with pytest.raises(ConfigError, match=r"drop_duplicate_ids: 'yes' is not allowed; allowed: true or false"):
        cache.load_images(DataSpec(str(bad), image_dir=str(flat), drop_duplicate_ids="yes"))


def _competition(root, png_folder):
    """A competition download: train.csv and sample_submission.csv beside images/ and test/."""
    for sub in ("images", "test"):
        (root / sub).mkdir(parents=True)
        for p in sorted(png_folder.rglob("*.png"))[:6]:
            (root / sub / p.name).write_bytes(p.read_bytes())
    write_csv(root / "train.csv", [f"{p.stem},{p.parent.name}" for p in sorted((root / "images").iterdir())])
    write_csv(root / "sample_submission.csv", ["x,0"])
    return root


def test_competition_root_warns_once_what_was_taken_as_classes(tmp_path, png_folder, caplog):
    root = _competition(tmp_path / "comp", png_folder)
    with caplog.at_level(logging.WARNING):
        data = cache.load_images(DataSpec(str(root), img_size=8))
        cache.load_images(DataSpec(str(root), img_size=8))
    assert data.classes == ["images", "test"]  # still loaded: a class may be called "test"
    warned = [r.getMessage() for r in caplog.records if "looks like a dataset's root" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "sample_submission.csv, train.csv beside the folders" in warned[0]
    assert "sub-folder(s) named test" in warned[0]
    assert "taken as the 2 classes (images, test)" in warned[0]
    assert f"to train on its labelled rows: --set dataset={root / 'train.csv'} --set image_dir={root / 'images'}" in warned[0]


def test_split_folders_warn_and_point_at_train(tmp_path, caplog):
    root = tmp_path / "splits"
    write_png_folder(root / "train", n_per_class=2, classes=("a", "b"))
    write_png_folder(root / "test", n_per_class=2, classes=("a", "b"))
    with caplog.at_level(logging.WARNING):
        cache.load_images(DataSpec(str(root), img_size=8))
    assert f"sub-folder(s) named test, train" in caplog.text
    assert f"to train on its classes: --set dataset={root / 'train'}" in caplog.text


def test_plain_class_folder_does_not_warn(png_folder, caplog):
    with caplog.at_level(logging.WARNING):
        cache.load_images(DataSpec(str(png_folder), img_size=8))
    assert "looks like" not in caplog.text and not caplog.records


def test_loaded_line_counts_classes_and_says_where_from(png_folder):
    for p in sorted((png_folder / "dog").iterdir())[:5]:
        p.unlink()  # dog: 7 images
    (png_folder / "fox" / "extra.png").write_bytes((png_folder / "fox" / "fox_000.png").read_bytes())  # fox: 13
    spec = DataSpec(str(png_folder), img_size=8)
    line = cache.describe_line(cache.load_images(spec))
    assert re.fullmatch(rf"data: {re.escape(str(png_folder))}, 32 images, 3 classes \(smallest 'dog' 7, largest 'fox' 13\), "
                        r"8 px, decoded \(\d+\.\d s\)", line), line
    cache.clear_memory()
    assert cache.describe_line(cache.load_images(spec)).endswith("8 px, from the disk cache (0.0 s)")
    digits = cache.describe_line(cache.load_images(DataSpec("digits", img_size=8)))
    assert digits.startswith("data: digits, 1,797 images, 10 classes (smallest '8' 174, largest '3' 183), 8 px, decoded (")


def test_a_run_prints_the_loaded_line_once(png_folder, capsys):
    p = P.resolve({"dataset": str(png_folder), "img_size": 32, "model": "test_resnet", "device": "cpu",
                   "batch_size": 8, "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}})
    tuning.check(p)
    tuning.check(p)
    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("data: ")]
    assert len(printed) == 1 and "36 images, 3 classes (smallest 'cat' 12, largest 'cat' 12), 32 px, decoded" in printed[0]
