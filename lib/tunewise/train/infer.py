"""Class probabilities of trained models on uint8 images: the one inference path that the
final phase's test scores and `tunewise predict` share.

Images are normalised exactly as in training (Batches: u8 * 1/(255 std) - mean/std, the
model's own mean and std); with ``tta`` each batch is also run horizontally flipped and the
two softmaxes averaged; several models average their probabilities (an ensemble).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from tunewise.data.batches import Batches


def probabilities(
    models: Sequence[torch.nn.Module],
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    tta: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(N, classes) float32 probabilities on the CPU, the mean over ``models`` (and over the
    flip with ``tta``). ``images``: uint8 (N, 3, H, W). Models run in eval mode, fp32 (no
    autocast: the exported folder must reproduce these numbers in a plain timm session)."""
    device = torch.device(device)
    images = images.to(device)
    index = torch.arange(len(images), device=device)
    labels = torch.zeros(len(images), dtype=torch.long, device=device)  # Batches wants labels; unused
    batches = Batches(images, labels, index, batch_size, tuple(mean), tuple(std))
    out = []
    models = [m.to(device).eval() for m in models]
    with torch.inference_mode():
        for x, _ in batches:
            views = [x, torch.flip(x, dims=[3])] if tta else [x]
            p = sum(torch.softmax(m(v).float(), dim=1) for m in models for v in views) / (len(models) * len(views))
            out.append(p.cpu())
            if on_batch is not None:
                on_batch(len(x))
    if not out:
        return torch.zeros((0, 0))
    return torch.cat(out)
