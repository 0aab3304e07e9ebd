"""One round of the correction loop on Kromp nuclei: how much do a few corrected images help, per click?

The loop of the napari plugin (``weakseg.inference.correct``), with a simulated annotator:

1. import ``../shared/data/kromp`` with the folder importer (the split of ``benchmarks/accuracy.py``:
   a seeded 20 % test part per diagnosis);
2. train CKS from points (one per ground-truth cell, at its centroid) on ``--train-images`` training
   images with ``recipes/cks_kromp_cpu.yaml``;
3. predict ``--correct-images`` further training images and correct the detections as a person would
   in napari: a detection within half a cell radius of a ground-truth cell's centroid is kept (one per
   cell, nearest first), every other detection is deleted (one click each) and every cell left without
   a detection gets a point at its centroid (one click each);
4. retrain from the first model (``model.init_from``) on the first images plus the corrected ones;
5. score both models on the test split (``weakseg evaluate --split test``: AP50, Dice) and write
   ``docs/correction_loop.md`` with the clicks it took.

Usage (from the repository root)::

    python benchmarks/correction_loop.py                     # the recipe's 1500 steps per model (~1 h on 2 cores)
    python benchmarks/correction_loop.py --steps 800
    python benchmarks/correction_loop.py --smoke --out /tmp/loop --docs /tmp/loop.md   # seconds; what the tests run

``--smoke`` runs the same code on a few small synthetic images with a tiny model for a few steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "cks_kromp_cpu.yaml"
#: The folder importer options of the Kromp store (as in benchmarks/accuracy.py).
KROMP_IMPORT = {"group_column": "Diagnosis", "test_fraction": 0.2, "val_fraction": 0.2, "split_seed": 0}
#: Recipe changes of --smoke: a principal small enough for a few CPU steps in seconds, on 96 px images.
SMOKE_OVERRIDES = {
    "model.backbone": {"type": "convnext_atto", "fpn_channels": 32},
    "model.head": {"type": "lacss", "crop_size": 32, "encoder_hidden": [32], "detection_layers": 1,
                   "segmentation_layers": 1},
    "data.crop_size": 64,
    "data.num_workers": 0,
    "data.target_cell_size": None,
    "train.batch_size": 1,
    "train.eval_every": 0,
    "train.checkpoint_every": 0,
    "eval.max_images": 2,
}


def make_smoke_data(folder: Path, n_images: int = 10, size: int = 96) -> Path:
    """Synthetic fluorescence images in the Kromp layout (``images/*.tif`` + ``labels/*.tif``)."""
    import tifffile

    from weakseg.data.synthetic import synthetic_images
    from weakseg.recipe.schema import SyntheticData

    cfg = SyntheticData(n_images=n_images, size=size, modality="fluorescence", cell_diameter=14.0, seed=0)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for item in synthetic_images(cfg):
        tifffile.imwrite(folder / "images" / f"{item.image_id}.tif", item.image[0])
        tifffile.imwrite(folder / "labels" / f"{item.image_id}.tif", item.labels)
    return folder


def ensure_store(source: Path, store: Path, options: dict[str, Any]) -> Any:
    """The store imported from ``source`` by the folder importer (kept when already complete)."""
    from weakseg.data.ingest import run_import
    from weakseg.data.store import open_store
    from weakseg.errors import DataError

    try:
        return open_store(store)
    except DataError:
        run_import("folder", source, store, options=options, workers=1)
        return open_store(store)


def cells(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (y, x; pixel centres at i + 0.5) and equivalent radii of every ground-truth cell."""
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids):
        return np.zeros((0, 2), np.float32), np.zeros(0)
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, ids), np.float64) + 0.5
    areas = ndimage.sum(np.ones_like(labels), labels, ids)
    return centres.astype(np.float32), np.sqrt(np.asarray(areas) / np.pi)


def simulate_correction(detected: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(corrected points, points added, points deleted) for one image, as described in the module docstring."""
    centres, radii = cells(labels)
    detected = np.asarray(detected, np.float64).reshape(-1, 2)
    if len(centres) == 0 or len(detected) == 0:
        return centres, len(centres), len(detected)
    dist = np.linalg.norm(detected[:, None, :] - centres[None, :, :], axis=-1)  # (detections, cells)
    pairs = np.argwhere(dist <= radii[None, :] / 2)
    pairs = pairs[np.argsort(dist[pairs[:, 0], pairs[:, 1]], kind="stable")]
    kept_det, kept_cell = set(), set()
    for d, c in pairs:
        if d not in kept_det and c not in kept_cell:
            kept_det.add(int(d))
            kept_cell.add(int(c))
    missed = [c for c in range(len(centres)) if c not in kept_cell]
    points = np.concatenate([detected[sorted(kept_det)], centres[missed]]).astype(np.float32)
    return points, len(missed), len(detected) - len(kept_det)


def evaluate(checkpoint: Path, store: Path) -> dict[str, float]:
    """AP50 and Dice of a checkpoint on the test split (``weakseg evaluate --json``)."""
    # both models scored at the store's measured cell sizes, whatever sizing each checkpoint would choose
    cmd = [sys.executable, "-m", "weakseg", "evaluate", str(checkpoint), str(store), "--split", "test", "--json",
           "--device", "cpu", "--no-progress", "--known-sizes"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    overall = json.loads(out)["overall"]
    return {k: float("nan") if overall[k] is None else float(overall[k]) for k in ("AP50", "dice")}


def _items(store: Any, ids: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, image, one point per ground-truth cell) for training images."""
    return [(i, np.asarray(store.image(i)[:]), cells(np.asarray(store.labels(i)[:]))[0]) for i in ids]


def correction_round(store: Any, ids: list[str], checkpoint: Path) -> tuple[list[Any], dict[str, int]]:
    """Predict ``ids`` with the model and correct them; the corrected items and the click counts."""
    import weakseg
    from weakseg.inference.correct import detect

    predictor = weakseg.load(str(checkpoint), device="cpu")
    items, counts = [], {"images": len(ids), "detections": 0, "added": 0, "deleted": 0, "cells": 0}
    for image_id in ids:
        image, labels = np.asarray(store.image(image_id)[:]), np.asarray(store.labels(image_id)[:])
        found = detect(predictor, image)
        points, added, deleted = simulate_correction(found.points, labels)
        items.append((image_id, image, points))
        counts["detections"] += len(found.points)
        counts["added"] += added
        counts["deleted"] += deleted
        counts["cells"] += len(np.unique(labels)) - 1
    counts["clicks"] = counts["added"] + counts["deleted"]
    return items, counts


def finished_run(runs: Path, name: str, steps: int | None) -> Any:
    """The run ``runs/<name>`` when it already finished ``steps`` steps (so ``--reuse`` skips training it
    again), as the fields of a ``RunResult`` the benchmark reads; else ``None``."""
    from types import SimpleNamespace

    from weakseg.checkpoint import load_checkpoint
    from weakseg.errors import WeaksegError

    try:
        ckpt = load_checkpoint(runs / name)
    except WeaksegError:
        return None
    if steps is not None and ckpt.step != steps:
        return None
    uri = (ckpt.raw.get("tracking") or {}).get("tracking_uri")
    return SimpleNamespace(checkpoint=ckpt.file or ckpt.path, run_id=ckpt.run_id, tracking_uri=uri)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the figures written to the docs page."""
    from weakseg.inference.correct import train_from_points

    out = Path(args.out)
    if args.smoke:
        source = make_smoke_data(out / "data")
        options = {"test_fraction": 0.3, "split_seed": 0}
    else:
        source = Path(args.data)
        options = KROMP_IMPORT
    store_path = out / "store.zarr"
    store = ensure_store(source, store_path, options)
    pool = sorted(i.image_id for i in store.select("train"))
    rng = np.random.default_rng(args.seed)
    chosen = [pool[k] for k in rng.permutation(len(pool))[: args.train_images + args.correct_images]]
    if len(chosen) < args.train_images + args.correct_images:
        raise SystemExit(f"{store_path}: only {len(pool)} training images for {len(chosen)} wanted")
    first_ids, corrected_ids = chosen[: args.train_images], chosen[args.train_images:]
    overrides = SMOKE_OVERRIDES if args.smoke else {}
    t0 = time.perf_counter()
    first_items = _items(store, first_ids)
    before = finished_run(out / "runs", "cks-points", args.steps) if args.reuse else None
    if before is None:
        before = train_from_points(RECIPE, first_items, out / "round-0", name="cks-points", steps=args.steps,
                                   output=out / "runs", overrides=overrides)
    corrected, counts = correction_round(store, corrected_ids, before.checkpoint)
    after = finished_run(out / "runs", "cks-corrected", args.steps) if args.reuse else None
    if after is None:
        after = train_from_points(RECIPE, first_items + corrected, out / "round-1", name="cks-corrected",
                                  steps=args.steps, output=out / "runs", overrides=overrides,
                                  init_from=before.checkpoint)
    results = {
        "smoke": bool(args.smoke),
        "steps": args.steps,
        "train_images": first_ids,
        "corrected_images": corrected_ids,
        "test_images": len(store.select("test")),
        "before": evaluate(before.checkpoint, store_path),
        "after": evaluate(after.checkpoint, store_path),
        "corrections": counts,
        "runs": {"before": before.run_id, "after": after.run_id, "tracking_uri": after.tracking_uri},
        "seconds": round(time.perf_counter() - t0, 1),
        "reused": bool(args.reuse),
    }
    if args.control:
        # the same extra steps from the first model on the first images only: what retraining alone gives
        control = finished_run(out / "runs", "cks-continued", args.steps) if args.reuse else None
        if control is None:
            control = train_from_points(RECIPE, first_items, out / "round-1-control", name="cks-continued",
                                        steps=args.steps, output=out / "runs", overrides=overrides,
                                        init_from=before.checkpoint)
        results["continued"] = evaluate(control.checkpoint, store_path)
        results["runs"]["continued"] = control.run_id
        results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def render(results: dict[str, Any]) -> str:
    """docs/correction_loop.md from the figures."""
    b, a, c = results["before"], results["after"], results["corrections"]
    data = "synthetic images (--smoke)" if results["smoke"] else "Kromp fluorescence nuclei"
    steps_flag = (" --smoke" if results["smoke"] else "") + (f" --steps {results['steps']}" if results["steps"] else "")
    steps_flag += " --control" if "continued" in results else ""
    lines = [
        "# One correction round",
        "",
        f"CKS trained from points on {len(results['train_images'])} training images of {data}, then "
        f"{c['images']} more images predicted and corrected (simulated clicks, see "
        "`benchmarks/correction_loop.py`), then retrained from the first model with the corrected images "
        f"added; {results['steps'] or 'the recipe'} steps per model with `recipes/cks_kromp_cpu.yaml`. "
        f"Scores on the {results['test_images']} test images.",
        "",
        "| model | test AP50 | test Dice |",
        "|---|---|---|",
        f"| points on {len(results['train_images'])} images | {b['AP50']:.3f} | {b['dice']:.3f} |",
        f"| + {c['images']} corrected images, retrained | {a['AP50']:.3f} | {a['dice']:.3f} |",
    ]
    if "continued" in results:
        k = results["continued"]
        lines.append(f"| retrained as long without the corrected images | {k['AP50']:.3f} | {k['dice']:.3f} |")
    lines += [
        "",
        f"Corrections: {c['clicks']} clicks on {c['images']} images ({c['cells']} cells, {c['detections']} "
        f"detections): {c['added']} points added on missed cells, {c['deleted']} false detections deleted.",
        "",
        f"Reproduce: `python benchmarks/correction_loop.py{steps_flag}` ({results['seconds']:.0f} s here"
        f"{', finished models reused' if results.get('reused') else ''}; "
        f"MLflow runs {results['runs']['before']} and {results['runs']['after']}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data and model, a few steps")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "kromp"), help="the Kromp folder")
    parser.add_argument("--out", default=str(REPO / "runs" / "correction_loop"), help="work and run folder")
    parser.add_argument("--docs", default=str(REPO / "docs" / "correction_loop.md"), help="page written")
    parser.add_argument("--train-images", type=int, default=None, help="images trained from points (10)")
    parser.add_argument("--correct-images", type=int, default=None, help="images predicted and corrected (8)")
    parser.add_argument("--seed", type=int, default=0, help="which training images are drawn")
    parser.add_argument("--reuse", action="store_true",
                        help="keep models that already finished their steps in --out (same --seed)")
    parser.add_argument("--control", action="store_true",
                        help="also retrain the first model as long on its own images (the gain of the steps alone)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = args.steps or 2
    args.train_images = args.train_images or (3 if args.smoke else 10)
    args.correct_images = args.correct_images or (2 if args.smoke else 8)
    results = run(args)
    Path(args.out, "correction_loop.json").write_text(json.dumps(results, indent=2))
    Path(args.docs).write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
