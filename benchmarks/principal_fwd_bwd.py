"""Time one forward + backward of the LACSS principal model (paper size by default).

The principal's share of a CKS step: backbone + FPN + detection head + L_det, training locations
(detection, NMS, matching), segmentation of N points and a stand-in loss on the crops, backward.
The full CKS train-step benchmark (collaborator, all losses, optimizer) lives in
``benchmarks/cks_train_step.py``. Example::

    python benchmarks/principal_fwd_bwd.py --size 544 --points 200 --precision bf16 fp32

Measured on the project's 2-core AVX512-BF16 CPU while it was nearly idle (load ~2), commit 765d345:
1748 GFLOP per step; bf16 5.51 s (317 GFLOP/s, 90 % of a concurrent 2048 matmul), fp32 14.0 s
(125 GFLOP/s). When the machine is shared, compare the printed percentage, not the seconds.
"""

from __future__ import annotations

import argparse
import time

import torch


def build(backbone: str, channels_last: bool, in_channels: int) -> torch.nn.Module:
    from weakseg.recipe import BackboneSpec, HeadSpec

    bb = BackboneSpec.of(backbone).build(in_channels=in_channels)
    return HeadSpec.of("lacss", channels_last=channels_last).build(backbone=bb, in_channels=in_channels)


def step(model, image, points, precision: str, timings: dict[str, float]) -> None:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    t0 = time.perf_counter()
    with ctx:
        out = model.forward_train(image)
        loss = model.detection_loss(out, points)
        t1 = time.perf_counter()
        locs = model.training_locations(out, points)
        t2 = time.perf_counter()
        crops = model.segment(out, locs)
        loss = loss + torch.sigmoid(crops.logits.float()).mean()
    t3 = time.perf_counter()
    loss.backward()
    t4 = time.perf_counter()
    for k, v in {"forward": t1 - t0, "locations": t2 - t1, "segment": t3 - t2, "backward": t4 - t3}.items():
        timings[k] = timings.get(k, 0.0) + v


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n x n matmul right now (a yardstick when the machine is shared)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def count_flops(model, image, points) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(model, image, points, "fp32", {})
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnext_small")
    parser.add_argument("--size", type=int, default=544)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="print the top ops of one step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.backbone, not args.no_channels_last, args.channels)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    image = torch.randn(1, args.channels, args.size, args.size)
    points = [torch.rand(args.points, 2) * args.size]
    print(f"{args.backbone} + lacss head: {n_params / 1e6:.2f} M parameters; image {args.size}^2, "
          f"{args.points} points, channels_last={not args.no_channels_last}, threads={torch.get_num_threads()}")
    flops = count_flops(model, image, points)
    print(f"{flops / 1e9:.0f} GFLOP per forward+backward (torch FlopCounterMode)")
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        step(model, image, points, precision, {})  # warm-up
        model.zero_grad(set_to_none=True)
        timings: dict[str, float] = {}
        yardstick = matmul_gflops(dtype)
        start = time.perf_counter()
        for _ in range(args.repeats):
            step(model, image, points, precision, timings)
            model.zero_grad(set_to_none=True)
        total = (time.perf_counter() - start) / args.repeats
        yardstick = (yardstick + matmul_gflops(dtype)) / 2
        parts = ", ".join(f"{k} {v / args.repeats:.2f}" for k, v in timings.items())
        print(f"{precision}: {total:.2f} s per forward+backward ({parts}); {flops / total / 1e9:.0f} GFLOP/s "
              f"while a 2048 matmul ran at {yardstick:.0f} GFLOP/s ({flops / total / 1e9 / yardstick:.0%})")
        if args.profile:
            with torch.profiler.profile() as prof:
                step(model, image, points, precision, {})
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
            model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
