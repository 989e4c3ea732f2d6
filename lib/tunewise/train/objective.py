"""The Optuna objective: sample settings, train on the cached data, return macro-F1.

The pruning contract is the usual one, in plain sight: every epoch ends with
`trial.report(f1, epoch)` and `if trial.should_prune(): raise optuna.TrialPruned()`.
Two ways a trial can go wrong without stopping the study:
- the loss turns NaN/inf: the trial is pruned, with the reason in `prune_reason`;
- CUDA runs out of memory: memory is freed and the trial fails with
  `fail_reason` "out of memory".
"""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import Any

import optuna
import torch

from tunewise.data.cache import ImageData
from tunewise.errors import ConfigError
from tunewise.records import EPOCHS_RUN_KEY, FAIL_REASON_KEY, PRUNE_REASON_KEY
from tunewise.train.hparams import TrainConfig
from tunewise.train.models import build_model, check_model_name, check_pretrained_file, check_weights_match
from tunewise.data.splits import HeldOut, train_val_split
from tunewise.train.loop import EpochMetrics, NonFiniteLoss, resolve_device, train_and_evaluate


TRAIN_LOSS_ATTR = "train_loss"  # trial user attr: mean training loss of each epoch, in order
# Trial user attrs: validation macro-F1 and accuracy of each epoch, in order (experiment
# tracking draws them as curves; multi-objective trials report no intermediate values).
F1_CURVE_ATTR = "f1_per_epoch"
ACCURACY_CURVE_ATTR = "accuracy_per_epoch"


class TrialFailed(Exception):
    """This trial could not run (e.g. out of memory); the study goes on."""


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Objective:
    """Callable objective over one cached dataset and one train/validation split."""

    def __init__(
        self,
        data: ImageData,
        space=None,  # tunewise.space.SearchSpace or None (fixed settings only)
        fixed: dict[str, Any] | None = None,
        *,
        val_fraction: float = 0.2,
        split_seed: int = 42,
        holdout: HeldOut | None = None,
        device: str = "auto",
    ):
        self.data = data
        self.space = space
        self.fixed = dict(fixed or {})
        self.device = resolve_device(device)
        # The train/validation split is drawn from what the test split left: no trial sees a test image.
        self.holdout = holdout
        pool = holdout.pool if holdout is not None else None
        self.train_idx, self.val_idx = train_val_split(data.labels.numpy(), data.classes, val_fraction, split_seed, pool=pool)
        self.base = self.settings({})  # checks the fixed settings before any trial runs
        self._check_space()
        for model in self._models():
            self._check_model_input(replace(self.base, model=model))

    def settings(self, params: dict[str, Any], where: str = "params") -> TrainConfig:
        """Defaults, overridden by the fixed settings, overridden by `params`; all checked."""
        cfg = TrainConfig.from_dict({**self.fixed, **params}, where)
        check_model_name(cfg.model)
        check_pretrained_file(cfg.pretrained_file)
        if cfg.batch_size > len(self.train_idx):
            raise ConfigError(
                f"{where}.batch_size: {cfg.batch_size} is larger than the {len(self.train_idx)} training images; "
                f"allowed: at most {len(self.train_idx)}"
            )
        return cfg

    def _check_space(self) -> None:
        """Every bound and choice of the search space must be a valid setting, found now
        rather than in the middle of the study."""
        if self.space is None:
            return
        for name, dist in self.space.distributions.items():
            if hasattr(dist, "choices"):
                candidates = list(dist.choices)
            else:
                candidates = [dist.low, dist.high]
            for value in candidates:
                self.settings({**self.space.fixed, name: value}, where="search_space")
        if self.space.fixed:
            self.settings(dict(self.space.fixed), where="search_space")

    def _models(self) -> list[str]:
        """Every model a trial can build: the fixed one, or each choice when the space
        searches over architectures."""
        dist = self.space.distributions.get("model") if self.space is not None else None
        return list(dist.choices) if dist is not None else [self.base.model]

    def _check_model_input(self, cfg: TrainConfig) -> None:
        """Build the model once (fetching pretrained weights now, if asked) and run one
        forward pass on CPU: a model too deep for img_size, or weights that cannot be
        loaded, fail here, named, not in every trial."""
        model = build_model(
            cfg.model, self.data.num_classes, pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file
        ).eval()
        if cfg.pretrained_file:
            check_weights_match(model, cfg.model, cfg.pretrained_file)
        with torch.inference_mode():
            try:
                model(self.data.images[:1].float())
            except RuntimeError as exc:
                raise ConfigError(
                    f"img_size: model {cfg.model!r} cannot take {self.data.images.shape[-1]}-px images "
                    f"({str(exc).splitlines()[0][:160]}); allowed: a larger img_size or another model"
                ) from None

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.space.sample(trial) if self.space is not None else {}
        cfg = self.settings(params)

        losses: list[float] = []
        f1s: list[float] = []
        accuracies: list[float] = []

        def report(m: EpochMetrics) -> None:
            losses.append(round(m.train_loss, 5))
            f1s.append(m.f1)
            accuracies.append(m.accuracy)
            trial.set_user_attr(TRAIN_LOSS_ATTR, losses)  # the pre-flight reads the baseline's curve
            trial.set_user_attr(F1_CURVE_ATTR, f1s)
            trial.set_user_attr(ACCURACY_CURVE_ATTR, accuracies)
            trial.set_user_attr("accuracy", m.accuracy)
            trial.set_user_attr(EPOCHS_RUN_KEY, m.epoch)
            self.report(trial, m)

        out_of_memory = False
        try:
            result = train_and_evaluate(self.data, self.train_idx, self.val_idx, cfg, device=self.device, on_epoch=report)
        except NonFiniteLoss as exc:
            trial.set_user_attr(PRUNE_REASON_KEY, str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # Outside the except block, so the traceback (and the model, optimizer and
            # activations its frames hold) is already gone when memory is freed.
            free_accelerator_memory()
            trial.set_user_attr(FAIL_REASON_KEY, "out of memory")
            raise TrialFailed(f"out of memory (model {cfg.model}, batch_size {cfg.batch_size}, device {self.device})")
        trial.set_user_attr("accuracy", result.accuracy)
        trial.set_user_attr("best_epoch", result.best.epoch)
        trial.set_user_attr("best_epoch_f1", result.best.f1)
        trial.set_user_attr("train_s", round(result.wall_s, 3))
        trial.set_user_attr("data_s", round(result.data_s, 3))
        return self.values(trial, cfg, result)

    def report(self, trial: optuna.Trial, m: EpochMetrics) -> None:
        """The pruning contract: report the epoch's macro-F1, stop if the pruner says so
        (multi-objective trials report nothing: Optuna cannot prune them)."""
        trial.report(m.f1, m.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {m.epoch} at macro-F1 {m.f1:.4f}")

    def values(self, trial: optuna.Trial, cfg: TrainConfig, result) -> float:
        """What the trial returns to Optuna: macro-F1 (multiobjective.MultiObjective adds more)."""
        return result.f1
