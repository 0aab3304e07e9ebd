"""Nishimura-1 prediction of a trained model on a real image: time per image, bf16 against fp32 (not a test).

Loads a Nishimura-1 checkpoint (for example from ``weakseg run recipes/nishimura_usiigaci_cpu.yaml``),
cuts a 520 x 704 field out of a real image and predicts it with the guided backpropagation in fp32
and in bf16 (``strategy.backprop_precision``), alternating, and prints the median wall time of each
and how well the bf16 masks match the fp32 ones (mean IoU of matched cells, cells found by each).

    .venv/bin/python benchmarks/nishimura_model.py runs/nish/nishimura_usiigaci_cpu/checkpoints/last.ckpt \\
        ../shared/data/usiigaci/set35/<image>.tif --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import attrs
import numpy as np
import torch


def matched_iou(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """Mean IoU over the cells of ``a`` matched in ``b`` (IoU > 0.5: one-to-one); cell counts of both."""
    from weakseg.eval.overlap import overlap_from_labels

    overlap, ids_a, ids_b = overlap_from_labels(a, b)
    iou = overlap.iou()
    matched = iou[iou > 0.5]
    return (float(matched.mean()) if matched.size else 0.0), int(ids_a.size), int(ids_b.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="resize factor before prediction (1: as given)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import skimage.io

    import weakseg

    image = skimage.io.imread(args.image).astype(np.float32)
    if image.ndim == 3:
        image = image.mean(-1)
    h, w = min(520, image.shape[0]), min(704, image.shape[1])
    field = image[:h, :w]
    predictor = weakseg.load(args.checkpoint, scale=args.scale)
    base = predictor.model.config
    print(f"{args.image}: field {h}x{w}, scale {args.scale}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    labels: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for precision in times:
            predictor.model.config = attrs.evolve(base, backprop_precision=precision)
            t = time.perf_counter()
            labels[precision] = predictor.predict(field)
            times[precision].append(time.perf_counter() - t)
    iou, n32, n16 = matched_iou(labels["fp32"], labels["bf16"])
    for precision, ts in times.items():
        print(f"{precision}: median {statistics.median(ts):6.2f} s per image ({', '.join(f'{t:.2f}' for t in ts)})")
    print(f"cells fp32 {n32}, bf16 {n16}; mean IoU of matched cells {iou:.3f}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
