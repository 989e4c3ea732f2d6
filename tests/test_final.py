"""The final phase (issue 12): the validated winner retrained on every non-test image, exported
as a folder timm loads by itself, scored once on the test split; `tunewise predict`.

Real training of timm's test_convnext on the built-in digits (32 px, 1 epoch; half the images
held out as the test split to keep the training runs small), a real papermill run of
final.ipynb, and a fresh Python process that imports only timm and torch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tunewise
from tunewise import notebook as tw
from tunewise import params as P
from tunewise.cli import main
from tunewise.data import cache
from tunewise.data.sources import DataSpec
from tunewise.errors import ConfigError, DataError
from tunewise.execute import phase_params, run_phase
from tunewise.phases import final as F
from tunewise.phases import tuning
from tunewise.phases.predict import predict
from tunewise.study.storage import open_storage

FAST = {"model": "test_convnext", "epochs": 1, "batch_size": 128, "hflip": True, "test_fraction": 0.5,
        "pruner": "none", "search_space": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}}


def write_pngs(folder: Path, images: np.ndarray, resized: int = 3) -> Path:
    """Digits as PNG files: most at the training size, the last few at 40 px (predict resizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        pil = Image.fromarray(img.transpose(1, 2, 0))
        if i >= len(images) - resized:
            pil = pil.resize((40, 40), Image.BILINEAR)
        pil.save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """quick -> validate through the library, then final through papermill (final.ipynb) with
    a 2-fold ensemble and a folder of images to predict."""
    root = tmp_path_factory.mktemp("final")
    common = {**FAST, "storage": str(root / "study.journal"), "cache_dir": str(root / "cache")}
    quick = P.resolve(overrides={**common, "run_dir": str(root / "quick"), "study_name": "quick", "n_trials": 2})
    tuning.tune(quick)
    val = P.resolve(overrides={**common, "phase": "validate", "run_dir": str(root / "validate"), "seeds": [42, 777]})
    source = tw.validation_source(val)
    configs = tw.validation_configs(source, 1)
    validation = tw.run_validation(val, configs, source)
    tw.record_validation(val, source, validation, validation.compare("baseline", "best"), configs)
    data = cache.load_images(DataSpec("digits", img_size=32), root / "cache")
    pngs = write_pngs(root / "new_images", data.images[:24].numpy())
    p = phase_params("final", None, {"run_dir": str(root / "final"), "final_params": str(root / "validate" / "final.yaml"),
                                     "final_folds": 2, "predict_images": str(pngs), "cache_dir": str(root / "cache"),
                                     "storage": common["storage"]})
    result = run_phase("final", p)
    assert result.ok, result.error
    return {"root": root, "p": p, "summary": result.summary, "pngs": pngs, "out": root / "final"}


def test_final_notebook_scores_the_test_split_and_exports_timm_folders(run):
    s, out = run["summary"], run["out"]
    assert s["phase"] == "final" and s["test_split"]["n"] == 899
    scores = s["scores"]
    assert {"single", "single_tta", "ensemble"} <= set(scores)  # hflip true: flip TTA is scored
    for x in scores.values():
        assert 0 <= x["macro_f1"] <= 1 and len(x["per_class_f1"]) == 10
        assert np.asarray(x["confusion"]).sum() == 899
    assert scores["ensemble"]["members"] == 2 and len(s["fold_f1"]) == 2 and 0 <= s["oof_f1"] <= 1
    assert s["validation_mean"] is not None and s["study_best"] is not None
    # the baseline recipe is scored too, unless validation kept it as the winner (then tuning bought 0)
    assert ("baseline" in scores) != any("the winner is the baseline" in n for n in s["notes"])
    assert s["tuning_bought_on_test"] is not None
    assert s["ledger"]["status"] == "first" and "test macro-F1" in s["headline"]
    for folder in [out / "model", out / "ensemble" / "fold1", out / "ensemble" / "fold2"]:
        assert {f.name for f in folder.iterdir()} == {"model.safetensors", "config.json", "tunewise.json"}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == "test_convnext" and config["num_classes"] == 10
    assert config["label_names"] == [str(i) for i in range(10)]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_mode"] == "squash"
    lineage = json.loads((out / "model" / "tunewise.json").read_text())
    assert lineage["study"] and lineage["trial"] is not None or lineage["validation"]["winner"] == "baseline"
    assert lineage["validation"]["verdict"] in ("real gain", "real loss", "within noise")
    assert lineage["test"]["single"]["macro_f1"] == scores["single"]["macro_f1"]
    assert lineage["dataset_fingerprint"] and lineage["tunewise_version"] == tunewise.__version__
    assert lineage["weights_sha256"] == s["weights_sha256"] and lineage["params"]["epochs"] == 1
    page = (out / "final.html").read_text()
    assert "Confusion matrix" in page or "Test split: single model" in page
    assert "F1 per class on the test split" in page and "Model scored" in page
    rows = list(csv.DictReader(open(out / "predictions.csv")))  # the notebook's predict cell
    assert len(rows) == 24


def test_the_test_score_is_recorded_on_the_study_for_the_postmortem(run):
    """The post-mortem sets the study's best, the validation mean and the test score side by
    side: the final phase records the score on the study the winner came from."""
    import optuna

    from tunewise.phases import postmortem
    from tunewise.records import TEST_SCORE_KEY

    study = optuna.load_study(study_name="quick", storage=open_storage(run["p"]["storage"], run["root"]))
    recorded = study.user_attrs[TEST_SCORE_KEY]
    assert recorded["value"] == run["summary"]["scores"]["single"]["macro_f1"]
    assert recorded["weights_sha256"] == run["summary"]["weights_sha256"]
    row = postmortem.estimates(study)
    assert row["test score"] == recorded["value"] and row["best in study"] is not None


PLAIN_TIMM = textwrap.dedent("""
    # A plain session: timm and torch (and PIL, timm's own dependency), no tunewise.
    import json, sys
    import timm, torch
    from PIL import Image

    dirs, paths = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    models = [timm.create_model("local-dir:" + d, pretrained=True).eval() for d in dirs]
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=models[0]))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        probs = sum(m(x).softmax(1) for m in models) / len(models)
    labels = models[0].pretrained_cfg["label_names"]
    assert not any(name.startswith("tunewise") for name in sys.modules), "tunewise was imported"
    print(json.dumps({"probs": probs.tolist(), "labels": [labels[i] for i in probs.argmax(1)]}))
""")


@pytest.mark.parametrize("members", [["model"], ["ensemble/fold1", "ensemble/fold2"]], ids=["single", "ensemble"])
def test_plain_timm_session_reproduces_tunewise_predict(run, tmp_path, members):
    dirs = [str(run["out"] / m) for m in members]
    out = tmp_path / "predictions.csv"
    assert main(["predict", *dirs, "--images", str(run["pngs"]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    paths = [str(run["pngs"] / f"{r['id']}.png") for r in rows]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", PLAIN_TIMM, json.dumps(dirs), json.dumps(paths)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    classes = [str(i) for i in range(10)]
    ours = np.array([[float(r[c]) for c in classes] for r in rows])
    assert [r["label"] for r in rows] == plain["labels"]
    np.testing.assert_allclose(ours, np.array(plain["probs"]), atol=1e-5)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # a folder: by path


def test_predict_from_python_keeps_a_csv_order_and_tta_differs(run, tmp_path):
    ids = [f"img_{i:03d}" for i in (7, 2, 19, 0)]  # a sample submission: its own order, no suffixes
    sheet = tmp_path / "sample.csv"
    sheet.write_text("id,label\n" + "".join(f"{i},0\n" for i in ids))
    plain = tunewise.predict(run["out"] / "model", sheet, image_dir=run["pngs"])
    assert plain.ids == ids and plain.probs.shape == (4, 10)
    np.testing.assert_allclose(plain.probs.sum(1), 1, rtol=1e-5)
    flipped = tunewise.predict([run["out"] / "model"], sheet, image_dir=run["pngs"], tta=True)
    assert not np.allclose(plain.probs, flipped.probs)  # the flip is really averaged in


def test_a_second_final_run_scores_the_same_model_and_says_so(run, spied_final):
    first = json.loads((run["out"] / F.LEDGER_FILE).read_text())["scorings"]
    p = P.replace(run["p"], final_folds=0, predict_images="")
    again = F.summary(p, F.run_final(p, log=lambda m: None))
    ledger = json.loads((run["out"] / F.LEDGER_FILE).read_text())["scorings"]
    assert len(ledger) == len(first) + 1
    assert again["weights_sha256"] == first[0]["weights_sha256"]  # deterministic on CPU: the same weights
    assert again["ledger"]["status"] == "same model" and "the same model as scored at" in again["ledger"]["message"]
    assert again["scores"]["single"]["macro_f1"] == first[0]["macro_f1"]
    # no training run of final ever saw a test image
    test = set(tuning.holdout(P.resolve(run["root"] / "validate" / "final.yaml"),
                              cache.load_images(DataSpec("digits", img_size=32), run["root"] / "cache")).indices.tolist())
    assert spied_final and all(not (c & test) for c in spied_final)


@pytest.fixture
def spied_final(monkeypatch):
    real = F.train_and_evaluate
    calls = []

    def spy(data, train_idx, val_idx, cfg, **kwargs):
        calls.append(set(np.asarray(train_idx).tolist()) | set(np.asarray(val_idx).tolist()))
        return real(data, train_idx, val_idx, cfg, **kwargs)

    monkeypatch.setattr("tunewise.phases.final.train_and_evaluate", spy)
    return calls


def test_another_test_split_in_the_same_run_folder_is_refused_before_training(run, tmp_path, spied_final):
    moved = tmp_path / "final.yaml"
    moved.write_text((run["root"] / "validate" / "final.yaml").read_text().replace("test_seed: 0", "test_seed: 1"))
    before = (run["out"] / F.LEDGER_FILE).read_text()
    with pytest.raises(ConfigError, match="test_fraction/test_seed: .* the test split is drawn once"):
        F.run_final(P.replace(run["p"], final_params=str(moved)))
    assert not spied_final and (run["out"] / F.LEDGER_FILE).read_text() == before


# ---- bad input: one clear message, nothing written ---------------------------------------------

@pytest.fixture
def model_copy(run, tmp_path):
    def copy(name: str, **config_changes) -> Path:
        folder = tmp_path / name
        shutil.copytree(run["out"] / "model", folder)
        cfg = json.loads((folder / "config.json").read_text())
        for key, value in config_changes.items():
            if key == "input_size":
                cfg["pretrained_cfg"]["input_size"] = value
            else:
                cfg[key] = value
        (folder / "config.json").write_text(json.dumps(cfg))
        return folder
    return copy


def _refused(tmp_path, error, match, dirs, images, **kwargs):
    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(error, match=match):
        predict(dirs, images, out=kwargs.pop("out", out), **kwargs)
    assert not out.exists()


def test_predict_refuses_a_folder_that_is_not_a_model_folder(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(tmp_path, ConfigError, "MODEL_DIR: .*empty lacks config.json, model.safetensors, so it is not a model folder",
             [empty], run["pngs"])
    _refused(tmp_path, ConfigError, "MODEL_DIR: .*nowhere does not exist", [tmp_path / "nowhere"], run["pngs"])


def test_predict_refuses_members_with_other_classes_or_input_sizes(run, tmp_path, model_copy):
    other = model_copy("letters", label_names=list("abcdefghij"))
    _refused(tmp_path, ConfigError, "MODEL_DIR: .*letters predicts classes .* same classes in the same order",
             [run["out"] / "model", other], run["pngs"])
    bigger = model_copy("bigger", input_size=[3, 48, 48])
    _refused(tmp_path, ConfigError, "MODEL_DIR: .*bigger takes 48-px images .* same input size",
             [run["out"] / "model", bigger], run["pngs"])


def test_predict_names_a_corrupt_image_and_refuses_an_empty_folder(run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run["pngs"], broken)
    (broken / "img_005.png").write_bytes(b"not a png at all")
    _refused(tmp_path, DataError, "1 unreadable image.*img_005.png", [run["out"] / "model"], broken)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no images here")
    _refused(tmp_path, DataError, "folder .*nothing holds no images", [run["out"] / "model"], tmp_path / "nothing")
    sheet = tmp_path / "ids.csv"
    sheet.write_text("id\nimg_001\nmissing_one\n")
    _refused(tmp_path, DataError, "1 id.* have no image .*missing_one", [run["out"] / "model"], sheet, image_dir=run["pngs"])


def test_predict_refuses_an_output_it_cannot_write(run, tmp_path, capsys):
    _refused(tmp_path, ConfigError, "--out: folder .*no_such_dir does not exist", [run["out"] / "model"], run["pngs"],
             out=tmp_path / "no_such_dir" / "p.csv")
    _refused(tmp_path, ConfigError, "--out: .* is a folder", [run["out"] / "model"], run["pngs"], out=tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere: nothing to refuse there
            _refused(tmp_path, ConfigError, "cannot be written", [run["out"] / "model"], run["pngs"], out=locked / "p.csv")
    finally:
        locked.chmod(0o700)
    # the command line: exit status 2 and the one message, no traceback
    assert main(["predict", str(tmp_path), "--images", str(run["pngs"]), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and "Traceback" not in err and not (tmp_path / "x.csv").exists()


def test_final_without_a_params_file_is_refused_before_a_kernel_starts(tmp_path, capsys):
    code = main(["run", "final", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "final_params: " in capsys.readouterr().err and not (tmp_path / "run" / "final.ipynb").exists()


def test_scoring_a_different_model_is_named_a_second_look_at_the_test_split():
    class Scored:  # only the weights' hash matters to the ledger
        weights_sha256 = "b" * 64

    earlier = [{"at": "2026-12-01T10:00:00+00:00", "weights_sha256": "a" * 64, "macro_f1": 0.9}]
    entry = F._ledger_entry(Scored(), earlier)
    assert entry["status"] == "different model"
    assert "DIFFERENT model (weights bbbbbbbbbbbb)" in entry["message"] and "aaaaaaaaaaaa" in entry["message"]
    assert "look number 2" in entry["message"] and "no longer unbiased" in entry["message"]
    assert F._ledger_entry(Scored(), [])["status"] == "first"


def test_final_in_validates_own_folder_keeps_the_validation_summary_it_replaced(tmp_path):
    import yaml

    p = P.resolve(overrides={"run_dir": str(tmp_path), "phase": "final"})
    (tmp_path / "final.yaml").write_text(yaml.safe_dump({"epochs": 1, "lr": 0.003}))
    validation = {"phase": "validate", "source_study": "s", "baseline_settings": P.train_settings(p)}
    (tmp_path / "summary.json").write_text(json.dumps({"phase": "final", "validation_summary": validation}))
    recipe = F.load_recipe(p)
    assert recipe.values["lr"] == 0.003 and recipe.validation == validation
    assert recipe.baseline == P.train_settings(p)
