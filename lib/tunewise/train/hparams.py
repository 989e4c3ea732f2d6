"""The hyperparameters one trial trains with, their defaults, and their allowed ranges.

A trial's settings are these defaults, overridden by the params file's fixed values,
overridden by what the sampler suggests. Every value is checked here, so a bad value
is a clear message naming the field instead of an error deep inside training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tunewise.data.batches import CROP_MODES
from tunewise.errors import ConfigError, did_you_mean, is_int, is_number

AMP_MODES = ("auto", "bf16", "fp16", "off")  # auto: bf16 on CUDA, off on CPU
# The default recipe scales with the budget, so the baseline is fair at 3 epochs as at 30
# (issue 21: a fixed 1-epoch warmup and full-strength augmentation crippled 3-epoch trials).
WARMUP_SHARE = 0.05  # warmup_epochs null: this share of the run's steps warms up
CROP_AUTO = "auto"  # translate, its largest shift growing with the epochs up to FULL_AUG_EPOCHS
FULL_AUG_EPOCHS = 20  # crop auto: full-strength shifts (TRANSLATE_PAD) from this many epochs
TRANSLATE_PAD = 0.125  # crop translate: largest shift, as a fraction of the image side


@dataclass(frozen=True)
class TrainConfig:
    model: str = "test_convnext"  # any timm model name
    pretrained: bool = False  # load pretrained weights through timm (hub or pretrained_file)
    pretrained_file: str | None = None  # local weights file (.safetensors/.pth) instead of the hub
    epochs: int = 5  # passes over the training split
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # peak learning rate, after warmup
    weight_decay: float = 0.05  # decoupled for adamw; not applied to norms and biases
    optimizer: str = "adamw"  # adamw | sgd | any timm optimizer name
    momentum: float = 0.9  # sgd and friends
    dropout: float = 0.0  # classifier-head dropout (timm drop_rate)
    drop_path: float = 0.0  # stochastic depth (timm drop_path_rate), where the model has it
    label_smoothing: float = 0.0  # share of target mass spread over all classes
    warmup_epochs: float | None = None  # linear warmup (null: 5% of the run), then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.01  # final learning rate as a share of lr
    mixup: float = 0.0  # mixup alpha through timm (0: off)
    cutmix: float = 0.0  # cutmix alpha through timm (0: off)
    hflip: bool = True  # random horizontal flip
    crop: str = "auto"  # auto (translate, scaled to the epochs) | none | translate (shift with reflection) | resized (random resized crop)
    grad_clip: float = 0.0  # max gradient norm (0: off)
    amp: str = "auto"  # auto | bf16 | fp16 | off
    eval_batch_size: int = 512  # images per validation step
    seed: int = 42  # weights, batch order and augmentation

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, where: str = "params") -> "TrainConfig":
        unknown = [k for k in values if k not in cls.names()]
        if unknown:
            raise ConfigError(
                "\n".join(f"{where}.{k}: unknown training setting{did_you_mean(k, cls.names())}" for k in unknown)
            )
        cfg = cls(**values)
        cfg.check(where)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, where: str = "params") -> None:
        """Raise one ConfigError listing every out-of-range value."""
        errors = [f"{where}.{name}: {msg}" for name, msg in _problems(self)]
        if errors:
            raise ConfigError("\n".join(errors))


def _problems(c: TrainConfig):
    def rng(name, lo, hi, integer=False, lo_open=False):
        v = getattr(c, name)
        ok = (is_int(v) if integer else is_number(v, finite=False)) and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            kind = "an integer" if integer else "a number"
            low = f"> {lo}" if lo_open else f">= {lo}"
            return name, f"{v!r} is out of range; allowed: {kind} {low} and <= {hi}"
        return None

    checks = [
        rng("epochs", 1, 10_000, integer=True),
        rng("batch_size", 1, 65_536, integer=True),
        rng("eval_batch_size", 1, 65_536, integer=True),
        rng("lr", 0, 100, lo_open=True),
        rng("weight_decay", 0, 10),
        rng("momentum", 0, 1),
        rng("dropout", 0, 0.99),
        rng("drop_path", 0, 0.99),
        rng("label_smoothing", 0, 0.99),
        rng("min_lr_ratio", 0, 1),
        rng("mixup", 0, 100),
        rng("cutmix", 0, 100),
        rng("grad_clip", 0, 1e6),
        rng("seed", 0, 2**32 - 1, integer=True),
    ]
    yield from (p for p in checks if p)
    if c.warmup_epochs is not None and (p := rng("warmup_epochs", 0, 10_000)):
        yield p[0], p[1] + " (or null: 5% of the run)"
    if not isinstance(c.model, str) or not c.model:
        yield "model", f"{c.model!r} is not a timm model name"
    crops = (CROP_AUTO, *CROP_MODES)
    if c.crop not in crops:
        yield "crop", f"{c.crop!r} is not allowed; allowed: {', '.join(crops)}{did_you_mean(c.crop, crops)}"
    if c.amp not in AMP_MODES:
        yield "amp", f"{c.amp!r} is not allowed; allowed: {', '.join(AMP_MODES)}{did_you_mean(c.amp, AMP_MODES)}"
    if not isinstance(c.optimizer, str):
        yield "optimizer", f"{c.optimizer!r} is not an optimizer name"
    else:
        from timm.optim import list_optimizers

        names = list_optimizers()
        if c.optimizer.lower() not in names:
            yield "optimizer", f"{c.optimizer!r} is not a timm optimizer{did_you_mean(c.optimizer, names)}; allowed: adamw, sgd, or any of timm.optim.list_optimizers()"
    if (c.mixup > 0 or c.cutmix > 0) and is_int(c.batch_size) and c.batch_size % 2:
        yield "batch_size", f"{c.batch_size} is odd, but mixup/cutmix need an even batch size"
    for flag in ("pretrained", "hflip"):
        if not isinstance(getattr(c, flag), bool):
            yield flag, f"{getattr(c, flag)!r} is not allowed; allowed: true or false"


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps of linear warmup: warmup_epochs of them, or WARMUP_SHARE of the run when it is
    null; never more than half the run (a 1-epoch trial with warmup_epochs 1 still decays)."""
    total = cfg.epochs * steps_per_epoch
    wanted = WARMUP_SHARE * total if cfg.warmup_epochs is None else cfg.warmup_epochs * steps_per_epoch
    return min(int(round(wanted)), total // 2)


def crop_setting(cfg: TrainConfig) -> tuple[str, float]:
    """(crop mode, largest translate shift as a share of the side). crop auto: translate whose
    shift grows with the epochs, so a 3-epoch run is not swamped by augmentation it has no
    time to learn through, while a 20-epoch run gets the full TRANSLATE_PAD."""
    if cfg.crop == CROP_AUTO:
        return "translate", TRANSLATE_PAD * min(1.0, cfg.epochs / FULL_AUG_EPOCHS)
    return cfg.crop, TRANSLATE_PAD
