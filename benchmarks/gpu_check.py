"""Every CUDA path of tunewise, exercised for real on a CUDA machine, in a few minutes.

The test suite runs on CPU only; this script is what checks the GPU code: data kept on the
GPU, bf16 autocast, channels_last, out-of-memory recovery, one worker per GPU, several
workers on one GPU, and predict. Each path gets a row: pass/fail, trial seconds, images/s,
peak GPU memory, and what was checked. Without CUDA it says so and exits 0: nothing here
pretends on a CPU.

    .venv/bin/python benchmarks/gpu_check.py [--images 4000] [--size 64] [--model resnet18]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROWS: list[dict] = []


def check(name: str):
    """Run one path; a row with pass/fail and its figures, whatever happens."""
    def wrap(fn):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        row = {"path": name, "ok": False, "trial_s": None, "images_s": None, "peak_mb": None, "note": ""}
        try:
            out = fn() or {}
            row.update(ok=bool(out.pop("ok", True)), **out)
        except Exception as exc:  # a failed path is a row, not the end of the check
            row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            traceback.print_exc(file=sys.stderr)
        row["peak_mb"] = row["peak_mb"] or round(torch.cuda.max_memory_allocated() / 2**20)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        ROWS.append(row)
        print(f"[{'pass' if row['ok'] else 'FAIL'}] {name} ({row['wall_s']} s) {row['note']}", flush=True)
        return fn
    return wrap


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--model", default="resnet18")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: needs a CUDA GPU and none is visible here (torch.cuda.is_available() is False); "
              "nothing was checked. Run it on a CUDA machine.")
        return 0

    from tunewise import config as C
    from tunewise.data import cache
    from tunewise.data.sources import DataSpec
    from tunewise.data.splits import train_val_split
    from tunewise.train.hparams import TrainConfig
    from tunewise.train.loop import train_and_evaluate

    tmp = Path(tempfile.mkdtemp(prefix="tw-gpu-check-"))
    n_gpus = torch.cuda.device_count()
    spec = DataSpec("synthetic", img_size=args.size, synthetic_samples=args.images, synthetic_classes=10)
    data = cache.load_images(spec, tmp / "cache")
    train_idx, val_idx = train_val_split(data.labels.numpy(), data.classes, 0.2, 42)
    cfg = TrainConfig(model=args.model, epochs=2, batch_size=128, amp="auto")

    def trial(c: TrainConfig, **kw):
        torch.cuda.synchronize()
        r = train_and_evaluate(data, train_idx, val_idx, c, device="cuda", **kw)
        torch.cuda.synchronize()
        return r, {"trial_s": round(r.wall_s, 2), "images_s": round(len(train_idx) * c.epochs / r.wall_s)}

    @check("data on the GPU")
    def _():
        r, fig = trial(cfg)
        images, _ = data.on("cuda")
        ok = images.is_cuda and r.device.startswith("cuda") and r.f1 > 0.1
        return {**fig, "ok": ok, "note": f"cached uint8 tensor on {images.device}, macro-F1 {r.f1:.3f}"}

    seen = {"bf16": 0, "channels_last": 0, "convs": 0}

    def spy(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and output.dtype == torch.bfloat16:
            seen["bf16"] += 1
        if isinstance(module, torch.nn.Conv2d) and inputs and inputs[0].dim() == 4:
            seen["convs"] += 1
            seen["channels_last"] += inputs[0].is_contiguous(memory_format=torch.channels_last)

    handle = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        r_amp, fig_amp = trial(cfg)
    finally:
        handle.remove()
    r_fp32, fig_fp32 = trial(TrainConfig(**{**cfg.to_dict(), "amp": "off"}))

    @check("bf16 autocast")
    def _():
        return {**fig_amp, "ok": seen["bf16"] > 0 and np.isfinite(r_amp.f1),
                "note": f"{seen['bf16']} bf16 head outputs; fp32 run {fig_fp32['trial_s']} s ({fig_fp32['images_s']} img/s)"}

    @check("channels_last")
    def _():
        share = seen["channels_last"] / max(seen["convs"], 1)
        return {**fig_amp, "ok": share > 0.9, "note": f"{share:.0%} of conv inputs channels_last"}

    @check("out-of-memory recovery")
    def _():
        import optuna

        from tunewise.train.objective import Objective, TrialFailed

        big = cache.load_images(DataSpec("synthetic", img_size=224, synthetic_samples=600, synthetic_classes=10), tmp / "cache")
        fixed = {"model": "resnet50", "epochs": 1, "batch_size": 256}
        objective = Objective(big, None, fixed, device="cuda")
        study = optuna.create_study(direction="maximize")
        torch.cuda.set_per_process_memory_fraction(0.005)  # ~0.7 GB on an H200: batch 256 of resnet50 cannot fit
        try:
            trial_ = study.ask()
            failed = False
            try:
                objective(trial_)
            except TrialFailed:
                failed = True
            left = torch.cuda.memory_allocated() / 2**20
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        small = Objective(big, None, {**fixed, "model": "resnet18", "batch_size": 32}, device="cuda")
        t0 = time.perf_counter()
        value = small(study.ask())
        ok = failed and trial_.user_attrs.get("fail_reason") == "out of memory" and left < 512 and value >= 0
        return {"ok": ok, "trial_s": round(time.perf_counter() - t0, 2),
                "note": f"trial failed 'out of memory', {left:.0f} MB left allocated, next trial ran (F1 {value:.3f})"}

    def study_with_workers(name: str, workers: int, gpus: list[int]):
        from tunewise.phases.tuning import tune

        p = C.resolve({"dataset": "synthetic", "img_size": args.size, "synthetic_samples": args.images,
                       "synthetic_classes": 10, "model": args.model, "epochs": 1, "n_trials": 2 * workers,
                       "pruner": "none", "run_dir": str(tmp / name), "cache_dir": str(tmp / "cache"),
                       "study_name": name, "workers": workers, "gpus": gpus, "device": "cuda",
                       "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})
        t0 = time.perf_counter()
        s = tune(p)
        wall = time.perf_counter() - t0
        codes = [w["exit_code"] for w in s.get("workers", [])]
        used = sorted({w["gpu"] for w in s.get("workers", [])})
        ok = s["n_finished"] >= 2 * workers and codes and all(c == 0 for c in codes)
        return {"ok": ok, "trial_s": round(wall / max(s["n_finished"], 1) * workers, 2),
                "note": f"{s['n_finished']} trials by {len(codes)} workers on GPU(s) {used}, exit codes {codes}"}

    @check(f"one worker per GPU ({n_gpus})")
    def _():
        return study_with_workers("per-gpu", n_gpus, list(range(n_gpus)))

    @check("several workers on one GPU (2 on GPU 0)")
    def _():
        return study_with_workers("shared-gpu", 2, [0])

    @check("predict on the GPU")
    def _():
        import timm
        from PIL import Image

        import tunewise
        from tunewise.phases.final import export_model

        folder = tmp / "pngs"
        folder.mkdir()
        for i, img in enumerate(data.images[:2000].numpy()):
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
        model = timm.create_model(args.model, num_classes=10)
        model_dir = export_model(model, tmp / "model", data.classes, {"img_size": args.size, "resize": "squash"}, {})
        tunewise.predict(model_dir, folder, device="cuda")  # warm-up: CUDA context, cuDNN autotune
        t0 = time.perf_counter()
        on_gpu = tunewise.predict(model_dir, folder, device="cuda", tta=True)
        wall = time.perf_counter() - t0
        on_cpu = tunewise.predict(model_dir, folder, device="cpu", tta=True)
        agree = float((on_gpu.probs.argmax(1) == on_cpu.probs.argmax(1)).mean())
        diff = float(np.abs(on_gpu.probs - on_cpu.probs).max())
        return {"ok": agree > 0.99 and diff < 1e-2, "images_s": round(len(on_gpu) / wall),
                "note": f"TTA, {len(on_gpu)} PNGs; argmax agrees with CPU on {agree:.1%}, max |dp| {diff:.1e}"}

    shutil.rmtree(tmp, ignore_errors=True)
    name = torch.cuda.get_device_name(0)
    print(f"\n{n_gpus} x {name}, torch {torch.__version__}, {args.model} at {args.size} px, {args.images} synthetic images\n")
    print("| path | result | trial s | images/s | peak GPU MB | checked |")
    print("|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['path']} | {'pass' if r['ok'] else 'FAIL'} | {r['trial_s'] or ''} | {r['images_s'] or ''} | "
              f"{r['peak_mb']} | {r['note']} |")
    print("\ncommand: " + " ".join([".venv/bin/python", "benchmarks/gpu_check.py", *sys.argv[1:]]))
    return 0 if all(r["ok"] for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
