"""One CKS training step at paper size: time, FLOPs, achieved GFLOP/s and peak memory, fp32 and bf16.

The paper-size configuration (Yu, CKS, and its reference implementation): ConvNeXt-S (patch 4)
+ FPN 384, the LACSS head with its reference defaults (detector 4 x 384 on strides 4/8/16,
segmentation 3 x 384 -> 64, 96-px crops, learned position encoding) and the default collaborator
(U-Net 16/32/64 + border CNN 32/32). One step = forward of principal and collaborator, all five
losses (L_det, L_M, L_S, L_B, L_MC) on a 544 x 544 crop with 200 points, backward, AdamW step.

Each precision runs in its own process so that its peak RSS is its own. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward).
``--compare N`` trains N steps from the same initialisation and data in both precisions and prints
the losses side by side (bf16 must not change the training curve). ``REFERENCE_JAX_S``, the "vs JAX"
column, is the JAX implementation's step on a 2-core AVX512-BF16 machine; ``benchmarks/compare_reference.py``
measures both sides in one run and is the figure to quote.

Measured on 2 cores of an AMD EPYC with AVX512-BF16 (no AMX; bf16 matmul peak 396 GFLOP/s), quiet machine:
1815 GFLOP per step, principal 63.74 M parameters; bf16 5.32 s/step (341 GFLOP/s, 86 % of the peak, peak RSS
3.6 GiB), fp32 11.6 s/step; the JAX step 31.9 s beside it. Losses of 4 paper-size steps agree to 0.05 % at
step 0; ``--curve 150``: fp32 / bf16 curves overlap, final mean instance IoU 0.602 / 0.593.

Examples::

    python benchmarks/train_step.py                     # both precisions, 3 timed steps each
    python benchmarks/train_step.py --compare 4         # paper size: losses of 4 steps, fp32 vs bf16
    python benchmarks/train_step.py --curve 150 --threads 1  # small model, synthetic cells: curves + IoU
    python benchmarks/train_step.py --one bf16 --profile   # top ops of one bf16 step
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

REFERENCE_JAX_S = 31.9
REFERENCE_PARAMS_M = 63.74


def build_strategy(in_channels: int, n_groups: int, backbone: str, steps: int = 90_000) -> Any:
    from weakseg.build import build_strategy as build
    from weakseg.components import DataSummary
    from weakseg.recipe import Recipe, structure

    recipe = structure(
        {
            "name": "bench",
            "data": {"store": "unused.zarr"},
            "model": {"backbone": {"type": backbone}, "head": {"type": "lacss"}},
            "collaborator": {"type": "cks"},
            "strategy": {"type": "cks", "warmup_steps": 9000},
            "train": {"steps": steps},
        },
        Recipe,
    )
    names = tuple(f"g{k}" for k in range(n_groups))
    return build(recipe, DataSummary(in_channels=in_channels, n_groups=n_groups, group_names=names))


def make_batch(size: int, n_points: int, in_channels: int, seed: int) -> Any:
    """A standardised noise image with n_points roughly cell-spaced points (a jittered grid)."""
    from weakseg.components import Batch

    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, in_channels, size, size, generator=g)
    side = int(n_points**0.5) + 1
    step = size / side
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    points = (grid.float() + 0.5) * step + (torch.rand(grid.shape, generator=g) - 0.5) * step * 0.6
    points = points[torch.randperm(points.shape[0], generator=g)[:n_points]]
    return Batch(image=image, points=[points], masks=[None], group=torch.zeros(1, dtype=torch.long))


def train_step(strategy: Any, optimizer: torch.optim.Optimizer, batch: Any, step: int, precision: str) -> dict:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with ctx:
        losses = strategy(batch, step)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def make_optimizer(strategy: Any, kind: str = "fused") -> torch.optim.Optimizer:
    """AdamW (lr 1e-3, wd 1e-4, as the reference); ``fused`` is one kernel over all parameters."""
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kind]
    return torch.optim.AdamW(strategy.parameters(), lr=1e-3, weight_decay=1e-4, **options)


def run_one(args: argparse.Namespace, precision: str) -> dict:
    """Time ``args.repeats`` steps after ``args.warmup`` untimed ones, in one precision; returns the figures.

    The warm-up is several steps because glibc's malloc raises its mmap threshold as large tensors are
    freed: the first two steps of a paper-size run take 1-2 GiB of page faults each, the fifth under
    0.1 GiB. A training run of thousands of steps runs at the settled speed, so that is what is timed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    strategy = build_strategy(args.channels, args.groups, args.backbone)
    strategy.train()
    principal_params = sum(p.numel() for p in strategy.principal_model.parameters())
    collaborator_params = sum(p.numel() for p in strategy.collaborator.parameters())
    optimizer = make_optimizer(strategy, args.optimizer)
    batch = make_batch(args.size, args.points, args.channels, seed=0)
    main_step = 10_000  # after the warm-up: soft labels, the configured prior
    t0 = time.perf_counter()
    train_step(strategy, optimizer, batch, main_step, precision)
    first = time.perf_counter() - t0
    with FlopCounterMode(display=False) as counter:
        train_step(strategy, optimizer, batch, main_step, precision)
    flops = counter.get_total_flops()
    for _ in range(max(args.warmup - 2, 0)):
        train_step(strategy, optimizer, batch, main_step, precision)
    times = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        train_step(strategy, optimizer, batch, main_step + k, precision)
        times.append(time.perf_counter() - t0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            train_step(strategy, optimizer, batch, main_step, precision)
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=40, max_shapes_column_width=80
        )
        print(table, file=sys.stderr)
    seconds = statistics.median(times)
    return {
        "best_step_s": min(times),
        "load_average": os.getloadavg()[0],
        "precision": precision,
        "threads": torch.get_num_threads(),
        "principal_params_M": principal_params / 1e6,
        "collaborator_params_M": collaborator_params / 1e6,
        "first_step_s": first,
        "step_s": seconds,
        "step_times_s": times,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / 1e9 / seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def compare(args: argparse.Namespace) -> None:
    """Train ``args.compare`` steps from the same start in fp32 and bf16; print the losses side by side."""
    curves = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        strategy = build_strategy(args.channels, args.groups, args.backbone)
        optimizer = make_optimizer(strategy, args.optimizer)
        curves[precision] = []
        for k in range(args.compare):
            batch = make_batch(args.size, args.points, args.channels, seed=k)
            curves[precision].append(train_step(strategy, optimizer, batch, 10_000 + k, precision))
    names = list(curves["fp32"][0])
    print(f"{'step':>4}  " + "  ".join(f"{n:>24}" for n in names))
    for k in range(args.compare):
        cells = [f"{curves['fp32'][k][n]:>11.5f} /{curves['bf16'][k][n]:>11.5f}" for n in names]
        print(f"{k:>4}  " + "  ".join(cells))
    print("(each cell: fp32 / bf16)")
    worst = max(
        abs(curves["fp32"][k][n] - curves["bf16"][k][n]) / max(abs(curves["fp32"][k][n]), 1e-6)
        for k in range(args.compare)
        for n in names
    )
    print(f"largest relative difference: {worst:.3%}")


def curve(args: argparse.Namespace) -> None:
    """Train a small CKS model on synthetic cells for ``args.curve`` steps in fp32 and bf16; print both curves.

    ConvNeXt-atto + FPN 32, 48-px crops, three 96 x 96 synthetic fluorescence images
    (``weakseg.data.synthetic``) with their centroid points; losses every 10 steps and the final mean
    instance IoU (best-overlapping prediction per ground-truth cell) of each precision.
    """
    import numpy as np
    from weakseg_cks.losses import mask_centroids

    from weakseg.build import build_strategy as build
    from weakseg.components import Batch, DataSummary
    from weakseg.data.synthetic import synthetic_image
    from weakseg.recipe import Recipe, SyntheticData, structure

    cfg = SyntheticData(size=96, modality="fluorescence", cell_diameter=20.0)
    cells = [synthetic_image(cfg, i) for i in range(3)]
    raw = np.stack([c.image.astype(np.float32) for c in cells])
    raw = (raw - raw.mean((1, 2, 3), keepdims=True)) / raw.std((1, 2, 3), keepdims=True)
    images = torch.tensor(raw)
    labels = [torch.tensor(c.labels.astype(np.int64)) for c in cells]
    batch = Batch(
        image=images,
        points=[mask_centroids(lab)[1] for lab in labels],
        masks=[None] * 3,
        group=torch.zeros(3, dtype=torch.long),
    )
    recipe = structure(
        {
            "name": "curve",
            "data": {"store": "unused.zarr"},
            "model": {
                "backbone": {"type": "convnext_atto", "fpn_channels": 32},
                "head": {"type": "lacss", "crop_size": 48, "encoder_hidden": [64, 64]},
            },
            "collaborator": {"type": "cks"},
            "strategy": {"type": "cks", "sigma": 8.0},
            "train": {"steps": args.curve},
        },
        Recipe,
    )

    def mean_iou(strategy: Any) -> float:
        ious = []
        for inst, lab in zip(strategy.principal().predict(images), labels, strict=True):
            pred = torch.as_tensor(inst.to_label_image(0.5))
            for cell in lab.unique()[1:]:
                gt = lab == cell
                best = 0.0
                for j in pred[gt].unique():
                    if j > 0:
                        p = pred == j
                        best = max(best, float((p & gt).sum() / (p | gt).sum()))
                ious.append(best)
        return float(np.mean(ious))

    curves, ious = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        strategy = build(recipe, DataSummary(in_channels=1))
        optimizer = torch.optim.AdamW(strategy.parameters(), lr=2e-3, weight_decay=1e-4)
        curves[precision] = [train_step(strategy, optimizer, batch, k, precision) for k in range(args.curve)]
        ious[precision] = mean_iou(strategy)
    names = list(curves["fp32"][0])
    print(f"{'step':>4}  " + "  ".join(f"{n:>21}" for n in names))
    for k in list(range(0, args.curve, 10)) + [args.curve - 1]:
        cells_ = [f"{curves['fp32'][k][n]:>10.4f}/{curves['bf16'][k][n]:<10.4f}" for n in names]
        print(f"{k:>4}  " + "  ".join(cells_))
    print("(each cell: fp32/bf16)")
    print(f"final mean instance IoU: fp32 {ious['fp32']:.3f}, bf16 {ious['bf16']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnext_small")
    parser.add_argument("--size", type=int, default=544)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--channels", type=int, default=1, help="image channels (LIVECell: 1)")
    parser.add_argument("--groups", type=int, default=1, help="collaborator output channels (LIVECell: 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=4,
        help="untimed steps first (the second counts the FLOPs); the allocator settles over the first 3-4",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizer", default="fused", choices=["fused", "foreach", "loop"])
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--one", choices=["bf16", "fp32"], help="run one precision in this process (JSON out)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of one step (stderr)")
    parser.add_argument("--compare", type=int, default=0, help="train this many steps in both precisions")
    parser.add_argument(
        "--curve", type=int, default=0, help="small model on synthetic cells: curves in both precisions"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare:
        compare(args)
        return
    if args.curve:
        curve(args)
        return
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return
    results = []
    for precision in args.precision:
        cmd = [sys.executable, __file__, "--one", precision] + [
            f"--{k}={v}"
            for k, v in vars(args).items()
            if k in ("backbone", "size", "points", "channels", "groups", "repeats", "warmup", "threads")
        ]
        if args.profile:
            cmd.append("--profile")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr)
        if args.profile:
            print(proc.stderr)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    r0 = results[0]
    print(
        f"CKS train step, {args.backbone} + FPN, {args.size}x{args.size}, {args.points} points, "
        f"{r0['threads']} threads; principal {r0['principal_params_M']:.2f} M parameters "
        f"(reference {REFERENCE_PARAMS_M} M), collaborator {r0['collaborator_params_M']:.3f} M"
    )
    print(
        f"{'precision':>9} {'s/step':>8} {'best':>7} {'vs JAX':>7} {'GFLOP':>8} {'GFLOP/s':>8} {'peak RSS':>9} "
        f"{'load':>5}  steps (s)"
    )
    for r in results:
        print(
            f"{r['precision']:>9} {r['step_s']:>8.2f} {r['best_step_s']:>7.2f} {REFERENCE_JAX_S / r['step_s']:>6.1f}x "
            f"{r['gflop_per_step']:>8.0f} {r['gflop_per_s']:>8.0f} {r['peak_rss_gib']:>7.2f} GiB "
            f"{r['load_average']:>5.1f}  " + ", ".join(f"{t:.2f}" for t in r["step_times_s"])
        )
    print("s/step: median of the timed steps; best: the fastest; GFLOP/s from the median; load: 1-minute system load")


if __name__ == "__main__":
    main()
