"""Real training of timm's tiny models on real small data, and the objective's contract."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref

import optuna
import pytest
import torch

from tunewise.data import cache
from tunewise.errors import ConfigError
from tunewise.train.hparams import TrainConfig
from tunewise.train.objective import Objective
from tunewise.study.runner import run_trials
from tunewise.data.sources import DataSpec
from tunewise.data.splits import train_val_split
from tunewise.train.loop import NonFiniteLoss, resolve_device, train_and_evaluate


@pytest.fixture
def digits():
    return cache.load_images(DataSpec("digits", img_size=32))


@pytest.fixture
def digits_split(digits):
    return train_val_split(digits.labels.numpy(), digits.classes, 0.2, seed=0)


def test_tiny_convnext_learns_digits(digits, digits_split):
    seen = []
    cfg = TrainConfig(model="test_convnext", epochs=3, hflip=False, lr=3e-3)
    result = train_and_evaluate(digits, *digits_split, cfg, on_epoch=seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3]
    assert result.f1 > 0.6, result.history  # chance is 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert 0 < result.data_s < result.wall_s and result.device == "cpu"


@pytest.mark.parametrize("extra", [
    {"model": "test_vit", "optimizer": "sgd", "lr": 0.05},
    {"model": "test_resnet", "mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1, "crop": "resized"},
    {"model": "test_efficientnet", "dropout": 0.2, "drop_path": 0.1, "grad_clip": 1.0, "amp": "bf16"},
])
def test_other_models_and_settings_train(digits, digits_split, extra):
    cfg = TrainConfig(epochs=1, batch_size=64, **extra)
    result = train_and_evaluate(digits, *digits_split, cfg)
    assert 0 <= result.f1 <= 1 and len(result.history) == 1


def test_same_seed_same_result(digits, digits_split):
    cfg = TrainConfig(epochs=1, batch_size=64)
    a = train_and_evaluate(digits, *digits_split, cfg)
    b = train_and_evaluate(digits, *digits_split, cfg)
    assert a.f1 == b.f1 and a.history[0].train_loss == b.history[0].train_loss


def test_diverging_loss_raises_at_once(digits, digits_split):
    cfg = TrainConfig(optimizer="sgd", lr=100.0, warmup_epochs=0, epochs=3)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) in epoch 1"):
        train_and_evaluate(digits, *digits_split, cfg)


def test_objective_reports_every_epoch_and_prunes_nan(digits):
    objective = Objective(digits, fixed={"epochs": 2, "batch_size": 64, "hflip": False})
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2] and trial.value == trial.intermediate_values[2]
    assert set(trial.user_attrs) >= {"accuracy", "best_epoch", "train_s", "data_s"}

    diverging = Objective(digits, fixed={"optimizer": "sgd", "lr": 100.0, "warmup_epochs": 0, "epochs": 2})
    study.optimize(diverging, n_trials=1)
    pruned = study.trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert pruned.user_attrs["prune_reason"].startswith("non-finite loss")


def test_pruner_stops_a_bad_trial(digits):
    objective = Objective(digits, fixed={"epochs": 3, "batch_size": 64, "hflip": False})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.99))
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert list(study.trials[0].intermediate_values) == [1]


def test_out_of_memory_frees_and_fails_trial_study_goes_on(digits, monkeypatch):
    # No GPU here: the one thing mocked is the allocator running out, on the first trial.
    models = []
    real_forward = torch.nn.Module.__call__

    def forward_that_runs_out(self, *args, **kwargs):
        if self.__class__.__name__ == "ConvNeXt" and not models:
            models.append(weakref.ref(self))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, *args, **kwargs)

    objective = Objective(digits, fixed={"epochs": 1, "batch_size": 64})
    monkeypatch.setattr(torch.nn.Module, "__call__", forward_that_runs_out)
    study = optuna.create_study(direction="maximize")
    result = run_trials(study, objective, n_trials=1, timeout=None)  # tunewise's runner, as a study runs
    failed, ok = study.trials
    assert result.n_failed == 1 and result.n_complete == 1
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["fail_reason"] == "out of memory"
    assert models[0]() is None, "the model of the failed trial is still alive"
    assert ok.state == optuna.trial.TrialState.COMPLETE


def test_bad_settings_fail_before_training(digits):
    with pytest.raises(ConfigError, match=r"'test_convnxt' is not a timm model \(did you mean 'test_convnext'"):
        Objective(digits, fixed={"model": "test_convnxt"})
    with pytest.raises(ConfigError, match=r"params.epochs: 0 is out of range; allowed: an integer >= 1"):
        Objective(digits, fixed={"epochs": 0})
    with pytest.raises(ConfigError, match=r"params.batch_size: 5000 is larger than the 1437 training images"):
        Objective(digits, fixed={"batch_size": 5000})
    with pytest.raises(ConfigError, match=r"params.weight_decy: unknown training setting \(did you mean 'weight_decay'"):
        Objective(digits, fixed={"weight_decy": 0.1})
    with pytest.raises(ConfigError, match=r"pretrained_file: /nope.pth does not exist"):
        Objective(digits, fixed={"pretrained_file": "/nope.pth"})
    with pytest.raises(ConfigError, match=r"optimizer: 'adamww' is not a timm optimizer \(did you mean 'adamw'"):
        Objective(digits, fixed={"optimizer": "adamww"})
    tiny = cache.load_images(DataSpec("digits", img_size=8))
    with pytest.raises(ConfigError, match=r"img_size: model 'test_convnext' cannot take 8-px images"):
        Objective(tiny)
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        resolve_device("cuda")


def test_pretrained_from_a_local_file(digits, digits_split, tmp_path):
    # The real loading path for pretrained=True with a file: weights saved by one
    # model are loaded by timm into a fresh one (no hub needed).
    import timm

    source = timm.create_model("test_resnet", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    cfg = TrainConfig(model="test_resnet", pretrained_file=str(tmp_path / "weights.pth"), epochs=1, batch_size=64)
    result = train_and_evaluate(digits, *digits_split, cfg)
    assert len(result.history) == 1


def test_pretrained_file_of_another_architecture_is_named(digits, tmp_path):
    import timm

    torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match=r"pretrained_file: could not load .*vit.pth into 'test_resnet'"):
        Objective(digits, fixed={"model": "test_resnet", "pretrained_file": str(tmp_path / "vit.pth")})


def test_pretrained_from_the_hub_without_network_is_one_clear_message(tmp_path):
    # No network here: the hub client in offline mode fails the way a blocked one does,
    # at once. The study must not start (nothing written), and the message says what to do.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNEWISE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "tunewise", "tune", "--set", "pretrained=true", "--set", "model=test_resnet",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "could not load pretrained weights for 'test_resnet'" in proc.stderr
    assert "pretrained_file: a local weights file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_pretrained_without_a_hub_fails_at_once_naming_pretrained_file(env, tmp_path):
    # A subprocess: huggingface_hub reads its environment once, at import.
    code = ("import time; from tunewise.train.models import build_model\n"
            "start = time.monotonic()\n"
            "try:\n    build_model('test_resnet', 3, pretrained=True)\n"
            "except Exception as exc:\n    print(type(exc).__name__, round(time.monotonic() - start, 1), exc)\n")
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**clean, "HF_HOME": str(tmp_path / "hf"), **env})
    kind, seconds, message = proc.stdout.split(" ", 2)
    assert kind == "SetupError" and float(seconds) < 5, proc.stdout + proc.stderr
    assert "could not load pretrained weights for 'test_resnet'" in message and "not in the local cache" in message
    assert ("HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in env else "no connection to 127.0.0.1:9") in message
    assert "pretrained_file: a local weights file" in message
