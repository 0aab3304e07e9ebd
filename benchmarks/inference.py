"""Inference speed, FLOPs and memory of the CKS principal model.

Cases (each in a fresh subprocess, so peak RSS belongs to that case alone):

- ``paper``: a 520 x 704 single-channel image through the paper-size model (ConvNeXt-S, FPN 384,
  LACSS head) with a forced number of detections (``max_detections = N``, ``min_score = 0``, so
  exactly N crops are segmented: ~300 like a typical LIVECell image, 2560 like the reference JAX
  code, which always segments 2560 crops), in float32 and in bf16 autocast. Reports end-to-end
  seconds per image through :class:`weakseg.inference.predictor.Predictor` (standardise, model,
  results to CPU), the model alone and its backbone part, FLOPs counted with
  ``torch.utils.flop_counter.FlopCounterMode``, achieved GFLOP/s and peak RSS.
- ``agreement``: bf16 vs fp32 on the same image with random weights: the top-300 fp32 detections
  found again in bf16 and the IoU of their masks (a numeric check, not accuracy).
- ``trained_ap`` (``--checkpoint CKPT --store STORE``): AP50 of a trained checkpoint in fp32 and
  bf16 through ``weakseg evaluate`` (they should agree within 0.01).
- ``gpu`` (when CUDA is there): images/s at 520 x 704, bf16, batches of 8/16/32, 300 crops each.
- ``large``: a 10000 x 10000 uint16 TIFF (memory-mapped) predicted tile by tile into an int32 label
  image with a smaller model (ConvNeXt-atto, FPN 64, LACSS head with 2 conv layers per head):
  peak RSS and megapixels per second.

Weights are random (no pretrained weights can be downloaded here); speed does not depend on them
once the number of crops is forced. Usage::

    .venv/bin/python benchmarks/inference.py                 # everything (about 15 min on 2 cores)
    .venv/bin/python benchmarks/inference.py --cases paper --repeats 3
    .venv/bin/python benchmarks/inference.py --cases large --large-size 4000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_principal(backbone: str, head: dict[str, Any], in_channels: int = 1, seed: int = 0) -> Any:
    import torch

    from weakseg.recipe import BackboneSpec, HeadSpec

    torch.manual_seed(seed)
    bb = BackboneSpec.of(backbone).build(in_channels=in_channels)
    model = HeadSpec.of("lacss", **head).build(backbone=bb, in_channels=in_channels)
    return model.eval()


def disc_image(shape: tuple[int, int], n: int, seed: int = 0, radius: tuple[float, float] = (6, 11)) -> Any:
    """A (1, H, W) uint16 image of ``n`` bright discs (random places, may touch) on a noisy background."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = shape
    fg = np.zeros(shape, bool)
    for _ in range(n):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, h))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        fg[y0:y1, x0:x1] |= (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
    image = rng.normal(100, 5, size=shape) + 400.0 * fg
    return np.clip(image, 0, None).astype(np.uint16)[None]


def test_image(shape: tuple[int, int], seed: int = 0) -> Any:
    return disc_image(shape, max(1, shape[0] * shape[1] // 1200), seed=seed)


def case_paper(detections: int, precision: str, repeats: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from weakseg.data.normalize import standardize
    from weakseg.inference.predictor import Predictor

    torch.set_num_threads(threads)
    base_rss = peak_rss_mb()
    model = build_principal("convnext_small", {"max_detections": detections, "min_score": 0.0})
    image = test_image((520, 704))
    pred = Predictor(model, precision=precision, tile_size=1024, score_threshold=0.0)
    x = torch.from_numpy(standardize(image))[None]

    def model_only() -> Any:
        with torch.inference_mode(), pred._autocast():
            return model.predict(x)

    def backbone_only() -> Any:
        with torch.inference_mode(), pred._autocast():
            return model.forward_train(x)

    n_found = len(pred.predict_instances(image))  # warm-up (oneDNN primitive caches)
    plan = [("end_to_end", lambda: pred.predict_instances(image))] * repeats
    plan += [("model", model_only), ("backbone_and_detection_head", backbone_only)]
    timings: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for name, fn in plan:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        timings.setdefault(name, []).append(time.perf_counter() - t0)
        cpu.setdefault(name, []).append(time.process_time() - c0)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.predict(x)
    flops = counter.get_total_flops()
    med = {k: float(np.median(v)) for k, v in timings.items()}
    return {
        "case": "paper",
        "model": "ConvNeXt-S + FPN 384 + LACSS head (63.7 M params in the reference)",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "image": [520, 704],
        "precision": precision,
        "detections": n_found,
        "threads": threads,
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "seconds_all": {k: [round(t, 3) for t in v] for k, v in timings.items()},
        # CPU seconds of this process / threads: the wall time the run would take with the threads to
        # itself (the machine is shared, so wall times above include waiting for other processes)
        "cpu_seconds_per_thread": {k: round(float(np.median(v)) / threads, 3) for k, v in cpu.items()},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "gflops": round(flops / 1e9, 1),
        "achieved_gflop_s_wall": round(flops / 1e9 / med["model"], 1),
        "achieved_gflop_s_cpu": round(flops / 1e9 / (float(np.median(cpu["model"])) / threads), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_model_mb": round(base_rss, 1),
    }


def case_agreement(threads: int) -> dict[str, Any]:
    """bf16 vs fp32 crop by crop on the paper-size model (random weights, 2560 crops): how many
    detections stay (same place within 1 px) and the IoU of their binarised masks."""
    import numpy as np
    import torch

    from weakseg.inference.predictor import Predictor

    torch.set_num_threads(threads)
    model = build_principal("convnext_small", {"max_detections": 2560, "min_score": 0.0})
    image = test_image((520, 704))
    ref = Predictor(model, precision="fp32", score_threshold=0.0).predict_instances(image)
    test = Predictor(model, precision="bf16", score_threshold=0.0).predict_instances(image)
    top = 300  # the detections a real image would have
    a, b = ref.locations[:top].numpy(), test.locations.numpy()
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    j = d.argmin(1)
    same = d[np.arange(len(a)), j] <= 1.0
    ious = []
    for i in np.nonzero(same)[0]:
        if not torch.equal(ref.origins[i], test.origins[j[i]]):
            ious.append(0.0)
            continue
        m1, m2 = ref.masks[i] >= 0.5, test.masks[j[i]] >= 0.5
        union = int((m1 | m2).sum())
        ious.append(1.0 if union == 0 else int((m1 & m2).sum()) / union)
    ious = np.array(ious)
    return {
        "case": "agreement",
        "what": "top-300 fp32 detections found again in bf16 (within 1 px) and the IoU of their masks (random weights)",
        "found_again": round(float(same.mean()), 4),
        "median_mask_iou": round(float(np.median(ious)), 4) if len(ious) else None,
        "mask_iou_over_0.5": round(float((ious > 0.5).mean()), 4) if len(ious) else None,
        "max_abs_score_diff_top300": round(float(np.abs(ref.scores[:top] - test.scores[:top]).max()), 4),
    }


def case_trained_ap(checkpoint: str, store: str, split: str, max_images: int | None) -> dict[str, Any]:
    """AP50 of a trained checkpoint on a store split in fp32 and bf16 (``weakseg evaluate``)."""
    out: dict[str, Any] = {"case": "trained_ap", "checkpoint": checkpoint, "store": store, "split": split}
    for precision in ("fp32", "bf16"):
        cmd = [
            sys.executable,
            "-m",
            "weakseg",
            "evaluate",
            checkpoint,
            store,
            "--split",
            split,
            "--json",
            "--precision",
            precision,
            "--device",
            "cpu",
            "--no-progress",
        ]
        if max_images:
            cmd += ["--max-images", str(max_images)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            out[precision] = {"error": proc.stderr[-1500:]}
            continue
        overall = json.loads(proc.stdout)["overall"]
        out[precision] = {k: overall.get(k) for k in ("AP50", "mAP", "n_gt", "n_pred")}
        out[precision]["seconds"] = round(time.perf_counter() - t0, 1)
    if "AP50" in out.get("fp32", {}) and "AP50" in out.get("bf16", {}):
        out["ap50_difference"] = round(abs(out["fp32"]["AP50"] - out["bf16"]["AP50"]), 4)
    return out


def case_large(size: int, threads: int, tile: int, batch: int) -> dict[str, Any]:
    import numpy as np
    import tifffile
    import torch

    from weakseg.inference.io import open_image
    from weakseg.inference.predictor import Predictor

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        path = Path(tmp) / "large.tif"
        # written band by band so that this process never holds the image
        rng = np.random.default_rng(0)
        band = 1000
        mm = tifffile.memmap(path, shape=(size, size), dtype=np.uint16, bigtiff=True)  # contiguous, on disk
        patch = disc_image((band, band), 700, seed=1)
        for y in range(0, size, band):
            for x in range(0, size, band):
                h, w = min(band, size - y), min(band, size - x)
                mm[y : y + h, x : x + w] = np.roll(patch[0], int(rng.integers(0, band)), axis=1)[:h, :w]
        mm.flush()
        del mm
        rss_before = peak_rss_mb()
        model = build_principal(
            "convnext_atto",
            {"detection_layers": 2, "segmentation_layers": 2, "max_detections": 2048, "min_score": 0.2},
        )
        pred = Predictor(model, tile_size=tile, overlap=128, batch_size=batch, score_threshold=0.5)
        t0, c0 = time.perf_counter(), time.process_time()
        with open_image(path) as view:
            assert isinstance(view.array, np.memmap)
            labels, table = pred.predict_labels(view)
        seconds = time.perf_counter() - t0
        cpu_per_thread = (time.process_time() - c0) / threads
    return {
        "case": "large",
        "model": "ConvNeXt-atto + FPN 64 + LACSS head (2 conv layers per head), random weights",
        "image": [size, size],
        "tile": tile,
        "batch": batch,
        "threads": threads,
        "cells": len(table.scores),
        "seconds": round(seconds, 1),
        "megapixels_per_s": round(size * size / 1e6 / seconds, 3),
        "cpu_seconds_per_thread": round(cpu_per_thread, 1),
        "megapixels_per_s_cpu": round(size * size / 1e6 / cpu_per_thread, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_predict_mb": round(rss_before, 1),
    }


def case_gpu(batch_sizes: tuple[int, ...] = (8, 16, 32), detections: int = 300) -> dict[str, Any]:
    """Images/s at 520 x 704 with bf16 batch inference on CUDA (the paper: 11.6 images/s on a V100)."""
    import torch

    from weakseg.data.normalize import standardize
    from weakseg.inference.predictor import Predictor

    if not torch.cuda.is_available():
        return {"case": "gpu", "skipped": "CUDA is not available"}
    model = build_principal("convnext_small", {"max_detections": detections, "min_score": 0.0})
    images = [test_image((520, 704), seed=k) for k in range(max(batch_sizes))]
    out: dict[str, Any] = {"case": "gpu", "device": torch.cuda.get_device_name(), "detections": detections}
    for bs in batch_sizes:
        pred = Predictor(model, precision="bf16", device="cuda", batch_size=bs)
        x = torch.stack([torch.from_numpy(standardize(im)) for im in images[:bs]]).cuda()

        def model_only(x: Any = x) -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                model.predict(x)

        def end_to_end(pred: Any = pred, batch: list[Any] = images[:bs]) -> None:
            pred.predict_batch(batch)

        for fn, name in ((model_only, "model"), (end_to_end, "end_to_end")):
            fn()
            torch.cuda.synchronize()
            n = 5
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
            out[f"images_per_s_{name}_batch{bs}"] = round(n * bs / (time.perf_counter() - t0), 1)
    out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_case(argv: list[str]) -> dict[str, Any]:
    """Run one case in a fresh interpreter; returns its JSON result."""
    cmd = [sys.executable, __file__, "--one", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"case": argv, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases",
        default="paper,agreement,large",
        help="comma-separated: paper, agreement, large, gpu, trained_ap",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--large-size", type=int, default=10000)
    parser.add_argument("--large-tile", type=int, default=1024)
    parser.add_argument("--large-batch", type=int, default=2)
    parser.add_argument("--checkpoint", help="trained checkpoint for the trained_ap case")
    parser.add_argument("--store", help="store with ground-truth masks for the trained_ap case")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.one:
        kind, *rest = args.one
        if kind == "paper":
            result = case_paper(int(rest[0]), rest[1], args.repeats, args.threads)
        elif kind == "agreement":
            result = case_agreement(args.threads)
        elif kind == "gpu":
            result = case_gpu()
        elif kind == "trained_ap":
            result = case_trained_ap(args.checkpoint, args.store, args.split, args.max_images)
        else:
            result = case_large(args.large_size, args.threads, args.large_tile, args.large_batch)
        print(json.dumps(result))
        return
    results = []
    common = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    cases = args.cases.split(",")
    if "paper" in cases:
        for detections in (300, 2560):
            for precision in ("fp32", "bf16"):
                results.append(run_case(["paper", str(detections), precision, *common]))
                print(json.dumps(results[-1]), flush=True)
    if "agreement" in cases:
        results.append(run_case(["agreement", *common]))
        print(json.dumps(results[-1]), flush=True)
    if "trained_ap" in cases:
        extra = ["--checkpoint", str(args.checkpoint), "--store", str(args.store), "--split", args.split]
        extra += ["--max-images", str(args.max_images)] if args.max_images else []
        results.append(run_case(["trained_ap", *extra]))
        print(json.dumps(results[-1]), flush=True)
    if "gpu" in cases:
        results.append(run_case(["gpu"]))
        print(json.dumps(results[-1]), flush=True)
    if "large" in cases:
        extra = ["--large-size", str(args.large_size), "--large-tile", str(args.large_tile)]
        results.append(run_case(["large", *common, *extra, "--large-batch", str(args.large_batch)]))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
