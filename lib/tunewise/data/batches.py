"""Batches sliced from the cached uint8 tensor, augmented as whole-batch tensor ops.

No DataLoader, no per-sample Python: each step gathers a batch by index from the
tensor (on the GPU when training there), converts and normalizes it, and applies
flip and crop to the whole batch with one `grid_sample` (airbench's model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CROP_MODES = ("none", "translate", "resized")


class Augment:
    """Random horizontal flip and crop, drawn per sample, applied per batch."""

    def __init__(self, hflip: bool = True, crop: str = "translate", crop_pad: float = 0.125, crop_scale: float = 0.35):
        self.hflip = hflip
        self.crop = crop
        self.crop_pad = crop_pad  # translate: largest shift, as a fraction of the image side
        self.crop_scale = crop_scale  # resized: smallest crop area, as a fraction of the image

    @property
    def active(self) -> bool:
        return self.hflip or self.crop != "none"

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        b, _, h, w = x.shape
        dev = x.device

        def rand(*shape):
            return torch.rand(*shape, generator=gen, device=dev)

        sx = torch.ones(b, device=dev)
        sy = torch.ones(b, device=dev)
        tx = torch.zeros(b, device=dev)
        ty = torch.zeros(b, device=dev)
        if self.crop == "translate":
            # Whole-pixel shifts: sampling stays exact (no blur), borders reflect.
            max_shift = max(1, round(self.crop_pad * w))
            tx = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=dev) * (2.0 / w)
            ty = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=dev) * (2.0 / h)
        elif self.crop == "resized":
            area = self.crop_scale + (1 - self.crop_scale) * rand(b)
            log_ratio = (rand(b) * 2 - 1) * math.log(4 / 3)
            ratio = torch.exp(log_ratio)
            sx = torch.sqrt(area * ratio).clamp(max=1)
            sy = torch.sqrt(area / ratio).clamp(max=1)
            tx = (rand(b) * 2 - 1) * (1 - sx)
            ty = (rand(b) * 2 - 1) * (1 - sy)
        if self.hflip:
            sx = torch.where(rand(b) < 0.5, -sx, sx)
        theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = sx, tx
        theta[:, 1, 1], theta[:, 1, 2] = sy, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Batches:
    """One epoch's batches over `indices` of the cached images, as normalized floats."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        batch_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        self.images, self.labels = images, labels
        self.indices = indices.to(images.device)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = generator
        self.augment = augment
        self.channels_last = channels_last
        self.dtype = dtype
        # Fold /255 into the normalization: x = u8 * scale + shift.
        std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(dtype)
        self.shift = (-mean_t / std_t).to(dtype)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator, device=order.device)]
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images.index_select(0, idx).to(self.dtype).mul_(self.scale).add_(self.shift)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)
