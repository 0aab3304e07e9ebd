"""Prediction time of the Nishimura-1 baseline per image, stage by stage (not a test).

Times, on one image (LIVECell size 520 x 704 by default) with K peaks placed on a jittered grid:
the heatmap forward pass, the guided backpropagation of all K peaks (batched, in windows), the
normalisation/assignment, and the mask step (graph cut or lite). The U-Net is untrained: the cost
does not depend on the weights, only on the sizes, K and the window.

    .venv/bin/python benchmarks/nishimura_predict.py --peaks 64 300 --unet-base 64 --device cpu
    .venv/bin/python benchmarks/nishimura_predict.py --peaks 300 --unet-base 16 --bf16 --threads 2
    .venv/bin/python benchmarks/nishimura_predict.py --peaks 300 --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def grid_peaks(k: int, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    h, w = shape
    n_y = max(1, int(round(np.sqrt(k * h / w))))
    n_x = int(np.ceil(k / n_y))
    ys, xs = np.meshgrid((np.arange(n_y) + 0.5) * h / n_y, (np.arange(n_x) + 0.5) * w / n_x, indexing="ij")
    pts = np.stack([ys.ravel(), xs.ravel()], 1)[:k] + rng.normal(0, 2, (min(k, n_y * n_x), 2))
    return torch.from_numpy(np.clip(pts, 0.5, [h - 0.5, w - 0.5]).astype(np.float32))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=520)
    ap.add_argument("--width", type=int, default=704)
    ap.add_argument("--peaks", type=int, nargs="+", default=[64])
    ap.add_argument("--unet-base", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=12.0)
    ap.add_argument("--peak-batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="guided backpropagation in bfloat16 autocast")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from weakseg_nishimura.graphcut import edge_intensity, edge_weights
    from weakseg_nishimura.guided_backprop import (
        assign_by_max_response,
        blur_responses,
        guided_responses,
        normalise_responses,
        output_regions,
    )
    from weakseg_nishimura.masks import GraphCutParams, label_cells_graphcut, label_cells_lite

    from weakseg.components import DataSummary
    from weakseg.recipe import StrategySpec

    device = torch.device(args.device)
    spec = StrategySpec.of("nishimura", unet_base=args.unet_base, sigma=args.sigma, peak_batch=args.peak_batch)
    cfg = spec.config
    strategy = spec.build(recipe=None, data=DataSummary(in_channels=1)).to(device).eval()
    model = strategy.principal()
    shape = (args.height, args.width)
    rng = np.random.default_rng(0)
    image = torch.randn(1, *shape, device=device)
    print(f"image {shape[0]}x{shape[1]}, U-Net base {args.unet_base}, window {cfg.resolved_window()}, "
          f"peak batch {args.peak_batch}, bf16 {args.bf16}, device {device}, threads {torch.get_num_threads()}")
    model.heatmap(image[None])  # warm-up
    for k in args.peaks:
        times: dict[str, float] = {}
        sync(device)
        t = time.perf_counter()
        model.heatmap(image[None])
        sync(device)
        times["heatmap"] = time.perf_counter() - t
        locations = grid_peaks(k, shape, rng).to(device)
        t = time.perf_counter()
        regions = output_regions(locations, shape, cfg.region_radius * cfg.sigma)
        maps, origins = guided_responses(
            strategy.unet, image, locations, regions, window=cfg.resolved_window(), batch_size=args.peak_batch,
            bf16=args.bf16,
        )
        sync(device)
        times["guided_backprop"] = time.perf_counter() - t
        t = time.perf_counter()
        maps = normalise_responses(blur_responses(maps, cfg.response_blur), cfg.response_norm)
        best, owner = assign_by_max_response(maps, origins, shape)
        times["assign"] = time.perf_counter() - t
        loc = locations.cpu().numpy()
        t = time.perf_counter()
        label_cells_lite(best, owner, loc, response_threshold=cfg.response_threshold)
        times["lite"] = time.perf_counter() - t
        t = time.perf_counter()
        edges = edge_weights(edge_intensity(image.cpu().numpy(), "phase"), cfg.edge_weights)
        params = GraphCutParams()
        label_cells_graphcut(best, owner, loc, edges, response_threshold=cfg.response_threshold, params=params)
        times["graphcut"] = time.perf_counter() - t
        total = times["heatmap"] + times["guided_backprop"] + times["assign"]
        print(
            f"K={k:4d}: " + "  ".join(f"{name} {sec:7.2f} s" for name, sec in times.items())
            + f"  | per peak (guided) {1000 * times['guided_backprop'] / k:6.1f} ms"
            + f"  | total graphcut {total + times['graphcut']:7.2f} s, lite {total + times['lite']:7.2f} s"
        )


if __name__ == "__main__":
    main()
