"""Prediction time and cell counts on blank and degenerate images, next to a real-looking image.

Cases, each at every size of ``--sizes`` (square images):

- ``real``: a mosaic of seeded synthetic images (``weakseg.data.synthetic``, the demo recipe's
  phase-contrast and fluorescence-like images, 1000 x 1000 pieces) cropped to the size;
- ``zeros`` (uint16), ``constant`` (uint16, 1234 everywhere), ``near_constant`` (uint16, 1000 +- 2
  counts of noise), ``all_nan`` (float32 NaN everywhere).

Every case goes through one :class:`weakseg.inference.predictor.Predictor` loaded from
``--checkpoint`` (for instance the one ``weakseg run recipes/demo.yaml`` writes), the way ``weakseg
predict`` runs it (``predict_labels``: tiles, model, stitching), after a warm-up on a small image.
Reports seconds and cells per case and size; ``--json`` writes them to a file too. Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/blank_images.py --checkpoint RUN/checkpoints/last.ckpt
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/blank_images.py --checkpoint CKPT --sizes 4000 --cases real,zeros
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CASES = ("real", "zeros", "constant", "near_constant", "all_nan")


def real_image(size: int, piece: int = 1000) -> np.ndarray:
    """(1, size, size) uint16: synthetic demo-like images laid side by side, cropped to ``size``."""
    from weakseg.data.synthetic import synthetic_image
    from weakseg.recipe import SyntheticData

    cfg = SyntheticData(n_images=1, size=min(piece, size), modality="mixed", cell_diameter=24.0, seed=0)
    n = -(-size // cfg.size)
    rows = []
    for i in range(n):
        rows.append(np.concatenate([synthetic_image(cfg, i * n + j).image[0] for j in range(n)], axis=1))
    return np.concatenate(rows, axis=0)[None, :size, :size]


def case_image(case: str, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case == "real":
        return real_image(size)
    if case == "zeros":
        return np.zeros((1, size, size), np.uint16)
    if case == "constant":
        return np.full((1, size, size), 1234, np.uint16)
    if case == "near_constant":
        return (1000 + rng.integers(-2, 3, size=(1, size, size))).astype(np.uint16)
    if case == "all_nan":
        return np.full((1, size, size), np.nan, np.float32)
    raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")


def run_case(predictor: Any, image: np.ndarray) -> tuple[float, int]:
    """(seconds, cells) of one ``predict_labels`` call."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN warning is expected here
        _labels, table = predictor.predict_labels(image)
    return time.perf_counter() - start, len(table.scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a weakseg checkpoint (e.g. of recipes/demo.yaml)")
    parser.add_argument("--sizes", default="256,1000,4000", help="comma-separated image edges (default 256,1000,4000)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated among {','.join(CASES)}")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    import weakseg

    predictor = weakseg.load(args.checkpoint, device=args.device, tile_size=args.tile_size)
    run_case(predictor, real_image(256))  # warm-up
    results = []
    print(f"{'size':>6} {'case':>14} {'seconds':>9} {'cells':>7}")
    for size in (int(s) for s in args.sizes.split(",")):
        for case in args.cases.split(","):
            seconds, cells = run_case(predictor, case_image(case, size))
            results.append({"size": size, "case": case, "seconds": round(seconds, 3), "cells": cells})
            print(f"{size:>6} {case:>14} {seconds:>9.2f} {cells:>7}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
