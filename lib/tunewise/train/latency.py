"""What a model costs at inference: milliseconds per image on a device, and its size.

Latency is a property of the architecture and the device, not of the weights' values:
warm-up passes first (allocator, cudnn autotune, caches), then the median of a few timed
passes over a fixed batch, divided by the batch size.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch

LATENCY_BATCH = 32  # images per timed forward pass
LATENCY_WARMUP = 2  # untimed passes first (allocator, cudnn autotune, caches)
LATENCY_RUNS = 5  # timed passes; the median is kept


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_latency(model: torch.nn.Module, img_size: int, device: torch.device, *, amp: str = "auto",
                    batch: int = LATENCY_BATCH, warmup: int = LATENCY_WARMUP, runs: int = LATENCY_RUNS) -> float:
    """Milliseconds per image for inference on `device`: `warmup` untimed passes over a
    batch of `batch` images, then the median of `runs` timed ones, divided by `batch`."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    model = model.eval().to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    if on_cuda:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    mode = "bf16" if amp == "auto" and on_cuda else amp
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
                if mode in ("bf16", "fp16") else nullcontext())
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + runs):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch
