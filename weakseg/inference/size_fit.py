"""Fitting a size model (:mod:`weakseg.inference.sizing`) and adding it to a checkpoint.

A run fits one after its last training step (``train.size_model``, on by default) when its principal
model offers backbone features; ``weakseg size-model RUN_OR_CKPT [--store STORE]`` fits one afterwards
for an existing checkpoint. Training crops are read from the store's training split at random resize
factors ``2**U(-1.5, 1.5)`` around each image's training factor; the target of each crop is its cell
diameter after the resize: the image's measured diameter (importer metadata, masks, else point
spacing: :mod:`weakseg.data.cellsize`) times the factor.

The blob-scale cue (:mod:`weakseg.inference.blob_size`) is calibrated on up to :data:`BLOB_IMAGES` of the
same training images at their native size; the size model keeps it, in place of the regression, when its
90th-percentile error over those images (each left out of its own calibration) is below the
regression's cross-validated one. The mask-size cue (:mod:`weakseg.inference.mask_size`) is fitted on the
same images, each segmented by the principal at the median training factor (the factor a new image is
first seen at); it replaces both when its left-out 90th-percentile error is the lowest. It is fitted only
when the training cell sizes vary (:attr:`~weakseg.inference.sizing.SizeModel.sizes_new_images`): across
one size its left-out error cannot tell a real response from a constant.

The size model is stored as the checkpoint's ``size_model`` entry; the file is rewritten atomically
with a new size and sha256 record (:func:`weakseg.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.inference.sizing import (
    CROP,
    LOG2_RANGE,
    SizeModel,
    crop_features,
    features_of,
    fit_size_regression,
    resized,
)

#: Training crops of a size model.
N_SAMPLES = 256
#: Training images the blob-scale calibration is fitted on (a seeded pick of larger sets).
BLOB_IMAGES = 48


def training_targets(cfg: Any, input_scale: Any, store: Any, seed: int = 0) -> list[tuple[Any, float, float]]:
    """(image info, its training factor, its native cell diameter) for every measured training image."""
    from weakseg.data.access import select_images
    from weakseg.data.scales import measure_image_diameters

    diameters = measure_image_diameters(cfg, store, seed)
    out = []
    for info in select_images(store, cfg.train_split, cfg.groups):
        if info.image_id in diameters and diameters[info.image_id][1] > 0:
            factor = input_scale.image_scale(info.image_id, info.group)
            out.append((info, float(factor), float(diameters[info.image_id][1])))
    return out


def _read_region(store: Any, info: Any, factor: float, rng: np.random.Generator) -> np.ndarray:
    """A random region of a store image that becomes at most :data:`CROP` pixels once resized by ``factor``."""
    _, h, w = (int(v) for v in info.shape)
    side = max(8, math.ceil(CROP / factor))
    sy, sx = min(side, h), min(side, w)
    y0, x0 = int(rng.integers(0, h - sy + 1)), int(rng.integers(0, w - sx + 1))
    arr = store.image(info.image_id)
    region = np.asarray(arr[..., y0 : y0 + sy, x0 : x0 + sx], dtype=np.float32)
    return region[None] if region.ndim == 2 else region


def fit_size_model(
    principal: Any,
    cfg: Any,
    input_scale: Any,
    *,
    in_channels: int | None = None,
    n_samples: int = N_SAMPLES,
    seed: int = 0,
    device: Any = "cpu",
) -> SizeModel | None:
    """A size model for ``principal`` from the training split of ``cfg``'s store (a DataConfig).

    ``None`` when the principal offers no backbone features or no training image has a measurable
    cell size.
    """
    from weakseg.data.access import open_data_store, store_path
    from weakseg.inference.adapt import adapt_channels

    if features_of(principal) is None:
        return None
    store = open_data_store(store_path(cfg))
    targets = training_targets(cfg, input_scale, store, seed)
    if not targets:
        return None
    trained_at = input_scale.cell_diameter or float(np.median([f * d for _, f, d in targets]))
    rng = np.random.default_rng(seed)
    was_training = bool(getattr(principal, "training", False))
    if hasattr(principal, "eval"):
        principal.eval()
    rows, logs, sources = [], [], []
    try:
        for k in range(max(n_samples, 10)):
            info, base, diameter = targets[k % len(targets)]
            factor = base * 2.0 ** rng.uniform(-LOG2_RANGE, LOG2_RANGE)
            region = adapt_channels(_read_region(store, info, factor, rng), in_channels, info.image_id)
            rows.append(crop_features(principal, resized(region, factor, device)))
            logs.append(math.log(diameter * factor))
            sources.append(k % len(targets))
    finally:
        if hasattr(principal, "train"):
            principal.train(was_training)
    model = fit_size_regression(np.stack(rows), np.asarray(logs), trained_at, sources, seed)
    native = [d for _, _, d in targets]
    model = attrs.evolve(model, diameter_spread=float(max(native) / min(native)))
    blob = _fit_blob(store, targets, rng)
    if blob is not None and blob.usable and blob.error90 < model.error90:
        model = attrs.evolve(model, blob=blob)
    # the mask cue is fitted across the training images' own cell sizes: on a set of one size any
    # constant looks exact left-out, so it competes only where the sizes vary (as sizes_new_images asks)
    mask = _fit_mask(principal, store, targets, rng, in_channels, device) if model.sizes_new_images else None
    best = model.blob.error90 if model.blob is not None else model.error90
    if mask is not None and mask.usable and mask.error90 < best:
        model = attrs.evolve(model, blob=None, mask=mask)
    return model


def _fit_mask(
    principal: Any,
    store: Any,
    targets: list[tuple[Any, float, float]],
    rng: np.random.Generator,
    in_channels: int | None,
    device: Any,
) -> Any:
    """The mask-size calibration on (a pick of) the training images, all segmented at their median
    training factor; ``None`` for a principal without ``predict``."""
    from weakseg.inference.adapt import adapt_channels
    from weakseg.inference.mask_size import centre_box, fit_mask_calibration, mask_diameter

    if not callable(getattr(principal, "predict", None)):
        return None
    factor = float(np.median([f for _, f, _ in targets]))
    picked = [targets[i] for i in sorted(rng.permutation(len(targets))[:BLOB_IMAGES])]
    measured, diameters = [], []
    for info, _, diameter in picked:  # predict() runs the principal in eval mode and restores its mode
        _, h, w = (int(v) for v in info.shape)
        y0, y1, x0, x1 = centre_box(h, w, factor)
        region = np.asarray(store.image(info.image_id)[..., y0:y1, x0:x1], np.float32)
        region = adapt_channels(region[None] if region.ndim == 2 else region, in_channels, info.image_id)
        measured.append(mask_diameter(principal, region, factor, device))
        diameters.append(diameter)
    return fit_mask_calibration(measured, diameters, factor)


def _fit_blob(store: Any, targets: list[tuple[Any, float, float]], rng: np.random.Generator) -> Any:
    """The blob-scale calibration on (a pick of) the training images, each read whole (centre cut to
    :data:`~weakseg.inference.sizing.BLOB_REGION` pixels, as estimation reads it)."""
    from weakseg.inference.blob_size import fit_blob_calibration
    from weakseg.inference.sizing import BLOB_REGION

    picked = [targets[i] for i in sorted(rng.permutation(len(targets))[:BLOB_IMAGES])]
    images, diameters = [], []
    for info, _, diameter in picked:
        _, h, w = (int(v) for v in info.shape)
        y0, x0 = max(0, (h - BLOB_REGION) // 2), max(0, (w - BLOB_REGION) // 2)
        arr = store.image(info.image_id)
        images.append(np.asarray(arr[..., y0 : y0 + BLOB_REGION, x0 : x0 + BLOB_REGION], np.float32))
        diameters.append(diameter)
    return fit_blob_calibration(images, diameters)


def add_size_model(path: str | Path, model: SizeModel) -> Path:
    """Store ``model`` in the checkpoint file ``path`` names (a ``last.ckpt`` pointer: its snapshot),
    rewritten atomically with a new size and sha256 record; returns the file written."""
    from weakseg.checkpoint.files import save_checkpoint
    from weakseg.checkpoint.load import read_checkpoint_file

    target, raw = read_checkpoint_file(path)
    raw["size_model"] = model.to_dict()
    return save_checkpoint(raw, target)


def describe(model: SizeModel) -> str:
    """One line about a fitted size model."""
    if model.mask is not None:
        m = model.mask
        return (
            f"size model: mask size at factor {m.factor:.3g} calibrated on {m.n_images} training images, trained "
            f"cell diameter {model.cell_diameter:.3g} px, left-out median error {100 * m.error:.1f} % (90th "
            f"percentile {100 * m.error90:.1f} %; the regression's: {100 * model.error90:.1f} %)"
        )
    if model.blob is not None:
        b = model.blob
        return (
            f"size model: blob scale ({b.polarity} blobs) calibrated on {b.n_images} training images, trained "
            f"cell diameter {model.cell_diameter:.3g} px, left-out median error {100 * b.error:.1f} % (90th "
            f"percentile {100 * b.error90:.1f} %; the regression's: {100 * model.error90:.1f} %)"
        )
    return (
        f"size model: regression on {model.n_samples} crops, trained cell diameter {model.cell_diameter:.3g} px, "
        f"cross-validated median error {100 * model.error:.1f} % (90th percentile {100 * model.error90:.1f} %)"
    )


# ------------------------------------------------------------------------------------------------
# weakseg size-model
# ------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the ``size-model`` subcommand."""
    p = subparsers.add_parser(
        "size-model",
        help="fit a size model (per-image cell diameter) and add it to a checkpoint",
        description=(
            "Fit a size model on the training split of the checkpoint's store (or STORE) and add it to the "
            "checkpoint, so that predict and evaluate resize every new image by its estimated cell diameter."
        ),
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder, last.ckpt or a .ckpt file")
    p.add_argument("--store", default=None, help="fit on this store's training split instead of the recipe's")
    p.add_argument("--samples", type=int, default=N_SAMPLES, help=f"training crops (default {N_SAMPLES})")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.set_defaults(func=_cmd_size_model)


def _cmd_size_model(args: argparse.Namespace) -> int:
    import attrs

    from weakseg.checkpoint import load_strategy
    from weakseg.data.scales import InputScale
    from weakseg.devices import resolve_device
    from weakseg.errors import WeaksegError
    from weakseg.inference.scale import checkpoint_input_scale

    if args.samples < 10:
        raise WeaksegError(f"--samples must be at least 10, got {args.samples}")
    device = resolve_device(args.device)
    strategy, ckpt = load_strategy(args.checkpoint, device=str(device))
    cfg = ckpt.recipe.data
    if args.store is not None:
        if not Path(args.store).exists():
            raise WeaksegError(f"--store {args.store}: does not exist; pass a store written by `weakseg data import`")
        cfg = attrs.evolve(cfg, store=str(args.store), synthetic=None)
    scale = checkpoint_input_scale(ckpt)
    model = fit_size_model(
        strategy.principal(),
        cfg,
        scale or InputScale(),
        in_channels=ckpt.data_summary.in_channels,
        n_samples=args.samples,
        seed=ckpt.recipe.train.seed,
        device=device,
    )
    if model is None:
        raise WeaksegError(
            f"{ckpt.path}: no size model can be fitted: strategy {ckpt.recipe.strategy.type!r} offers no backbone "
            f"features, or no training image of {cfg.store} has a measurable cell size (masks or points)"
        )
    written = add_size_model(ckpt.file or ckpt.path, model)
    print(f"{describe(model)}; added to {written}", file=sys.stdout)
    return 0
