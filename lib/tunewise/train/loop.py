"""Train a timm classifier on cached tensors and score it by macro-F1 on validation.

One function, `train_and_evaluate`, is the whole inner loop: model, optimizer and
schedule from timm, batches sliced from the cached tensor (on the GPU when there is
one), bf16 autocast and channels_last on CUDA, an `on_epoch` hook that lets Optuna
report and prune. A loss that turns NaN/inf raises `NonFiniteLoss` at once.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import f1_score
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from tunewise.data.batches import Augment, Batches
from tunewise.data.cache import ImageData
from tunewise.errors import ConfigError
from tunewise.train.hparams import TrainConfig, crop_setting, warmup_steps
from tunewise.train.models import build_model, model_norm

FINITE_CHECK_EVERY = 20  # steps between loss checks: each check syncs the GPU once


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite: these settings diverge."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"non-finite loss ({value}) in epoch {epoch}, by step {step}")


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    f1: float  # macro-F1 on the validation split
    accuracy: float
    train_loss: float
    seconds: float


@dataclass
class TrainResult:
    f1: float  # macro-F1 after the last epoch
    accuracy: float
    history: list[EpochMetrics] = field(default_factory=list)
    wall_s: float = 0.0  # the whole call
    data_s: float = 0.0  # making batches (gather, normalize, augment, mixup)
    eval_s: float = 0.0
    device: str = "cpu"
    model: nn.Module | None = None  # the trained model, when asked for (keep_model=True)

    @property
    def best(self) -> EpochMetrics:
        return max(self.history, key=lambda m: m.f1)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {device!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for CUDA but no CUDA GPU is visible; allowed here: auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy's global generator
    torch.manual_seed(seed)


def _autocast(cfg: TrainConfig, device: torch.device):
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode == "off":
        return nullcontext(), False
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode == "fp16"


def evaluate(model: nn.Module, batches: Batches, num_classes: int, autocast) -> tuple[float, float]:
    """(macro-F1, accuracy) over the batches."""
    model.eval()
    preds, targets = [], []
    with torch.inference_mode(), autocast:
        for x, y in batches:
            preds.append(model(x).argmax(1))
            targets.append(y)
    y_pred = torch.cat(preds).cpu().numpy()
    y_true = torch.cat(targets).cpu().numpy()
    f1 = f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0)
    return float(f1), float((y_pred == y_true).mean())


def train_and_evaluate(
    data: ImageData,
    train_idx,
    val_idx,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "auto",
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    time_data: bool = False,
    keep_model: bool = False,
) -> TrainResult:
    """Train `cfg.model` on `train_idx`, evaluate on `val_idx` after every epoch.

    `on_epoch` may raise (optuna.TrialPruned) to stop early. On CPU the data time is
    always measured; on CUDA only with `time_data=True`, which syncs the GPU per step.
    An empty `val_idx` trains without evaluating (the final model on every non-test image:
    f1 and accuracy are then nan); `keep_model` returns the trained model in the result.
    """
    start = time.perf_counter()
    device = resolve_device(device)
    on_cuda = device.type == "cuda"
    seed_everything(cfg.seed)
    images, labels = data.on(device)
    train_idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
    val_idx = torch.as_tensor(np.asarray(val_idx), dtype=torch.long)

    model = build_model(
        cfg.model, data.num_classes, pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file,
        dropout=cfg.dropout, drop_path=cfg.drop_path,
    ).to(device)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    mean, std = model_norm(model)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    batch_size = min(cfg.batch_size, len(train_idx))
    train_batches = Batches(
        images, labels, train_idx, batch_size, mean, std, shuffle=True, drop_last=True, generator=gen,
        augment=Augment(cfg.hflip, *crop_setting(cfg)), channels_last=on_cuda,
    )
    val_batches = Batches(images, labels, val_idx, cfg.eval_batch_size, mean, std, channels_last=on_cuda)

    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    steps_per_epoch = len(train_batches)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = warmup_steps(cfg, steps_per_epoch)  # scaled with the budget (hparams)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(total_steps - warmup, 1), lr_min=cfg.lr * cfg.min_lr_ratio,
        warmup_t=warmup, warmup_lr_init=cfg.lr * 0.01, warmup_prefix=True, t_in_epochs=False,
    )
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=data.num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    autocast, use_scaler = _autocast(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    sync = torch.cuda.synchronize if (on_cuda and time_data) else (lambda: None)
    measure_data = not on_cuda or time_data

    result = TrainResult(f1=0.0, accuracy=0.0, device=str(device))
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        batch_iter = iter(train_batches)
        for i in range(steps_per_epoch):
            t0 = time.perf_counter() if measure_data else 0.0
            x, y = next(batch_iter)
            if mixup is not None:
                x, y = mixup(x, y)
            if measure_data:
                sync()
                result.data_s += time.perf_counter() - t0
            with autocast:
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            scheduler.step_update(step)
            # A running sum stays non-finite once any loss was: check it every few
            # steps instead of syncing the GPU on every one.
            loss_sum += loss.detach().float()
            if (i + 1) % FINITE_CHECK_EVERY == 0 or i + 1 == steps_per_epoch:
                if not math.isfinite(loss_sum.item()):
                    raise NonFiniteLoss(epoch, step, loss_sum.item())
        t_eval = time.perf_counter()
        f1, acc = evaluate(model, val_batches, data.num_classes, autocast) if len(val_idx) else (math.nan, math.nan)
        result.eval_s += time.perf_counter() - t_eval
        metrics = EpochMetrics(epoch, f1, acc, loss_sum.item() / max(steps_per_epoch, 1), time.perf_counter() - epoch_start)
        result.history.append(metrics)
        result.f1, result.accuracy = f1, acc
        result.wall_s = time.perf_counter() - start
        if on_epoch is not None:
            on_epoch(metrics)
    result.wall_s = time.perf_counter() - start
    if keep_model:
        result.model = model.eval()
    return result


# The last epoch's fall in training loss, against the run's mean fall per epoch: at this
# share or more the loss was still falling at (about a third of) its usual pace when the budget
# ran out, so the run was still learning. A run that has converged falls ~0 at the end.
STEEP_LAST_EPOCH = 0.3


def undertrained(losses: list[float], epochs: int | None = None) -> str | None:
    """Why a run with these per-epoch training losses looks under-trained for its epochs,
    or None. Judged by the last epoch's fall against the mean fall per epoch (first epoch's
    mean to the last's), so the loss's scale does not matter; 3 epochs at least (with 2 the
    last epoch is the whole fall)."""
    losses = [float(x) for x in losses]
    if len(losses) < 3 or not all(math.isfinite(x) for x in losses):
        return None
    pace = (losses[0] - losses[-1]) / (len(losses) - 1)
    last = losses[-2] - losses[-1]
    if pace <= 0 or last / pace < STEEP_LAST_EPOCH:
        return None
    n = epochs or len(losses)
    return (f"the training loss was still falling steeply at the last epoch ({losses[-2]:.3f} -> {losses[-1]:.3f}, "
            f"{last / pace:.0%} of its mean fall per epoch since {losses[0]:.3f}): {n} epochs look too few for these "
            "settings, so the baseline is under-trained and the gain of tuning would be overstated; "
            "give it more epochs (or a higher lr) before tuning")
