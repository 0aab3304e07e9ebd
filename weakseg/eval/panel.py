"""The evaluation figure, like Fig. 4 of the CKS paper: image, instances, collaborator maps.

:func:`make_panel` draws one row of tiles from arrays: the image (contrast-stretched), the ground
truth and the predicted instances as coloured outlines over the image (predictions also filled
translucently), and any extra float maps in [0, 1] (e.g. the collaborator's foreground and border
probabilities from ``StrategyModule.panel``) with a perceptual colour map. :func:`write_panel` is
what the engine calls at each evaluation: it takes the first evaluated image of an
:class:`~weakseg.eval.evaluate.EvalResult` (or evaluates one image itself), asks the strategy for
its maps and writes a PNG.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Largest tile edge in the figure (bigger images are centre-cropped to this).
MAX_TILE = 768
#: Smaller images are enlarged (integer factor, nearest neighbour) to at least about this edge.
MIN_TILE = 256

_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
_HEADER = 18
_GAP = 4


def _to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W), any dtype -> (H, W, 3) uint8, each channel stretched to its 1-99.7 percentiles."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W) or (H, W), got shape {img.shape}")
    chans = []
    for c in img[: 3 if img.shape[0] >= 3 else img.shape[0]]:
        finite = c[np.isfinite(c)]
        lo, hi = (np.percentile(finite, [1.0, 99.7]) if finite.size else (0.0, 1.0))
        chans.append(np.clip((np.nan_to_num(c) - lo) / max(hi - lo, 1e-6), 0, 1))
    if len(chans) == 1:
        rgb = [chans[0]] * 3
    elif len(chans) == 2:  # two channels: magenta / green composite
        rgb = [chans[1], chans[0], chans[1]]
    else:
        rgb = chans
    return (np.stack(rgb, axis=-1) * 255).round().astype(np.uint8)


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """(n + 1, 3) uint8 distinct, saturated colours for labels 0..n (row 0 unused), stable across calls."""
    import colorsys

    hues = (seed * 0.137 + np.arange(n + 1) * 0.618033988749895) % 1.0
    out = np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]) * 255
    return out.round().astype(np.uint8)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of an instance whose 4-neighbour belongs to another label (inner outlines), bool (H, W)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    diff_y = lab[1:, :] != lab[:-1, :]
    diff_x = lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    return edge & (lab != 0)


def _overlay(base: np.ndarray, labels: np.ndarray, fill: float) -> np.ndarray:
    lab = np.asarray(labels).astype(np.int64)
    out = base.astype(np.float32)
    if lab.max(initial=0) == 0:
        return base.copy()
    ids, inverse = np.unique(lab, return_inverse=True)
    index = inverse.reshape(lab.shape) + (0 if ids[0] == 0 else 1)  # index 0 is always background
    colors = label_colors(len(ids) + 1).astype(np.float32)
    col = colors[index]
    inside = lab != 0
    if fill > 0:
        out[inside] = (1 - fill) * out[inside] + fill * col[inside]
    edge = boundaries(lab)
    out[edge] = col[edge]
    return out.round().astype(np.uint8)


def _colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 with matplotlib's 'magma' (grey without matplotlib)."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0, 1)
    try:
        from matplotlib import colormaps

        lut = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    except ImportError:  # pragma: no cover - matplotlib comes with mlflow
        lut = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return lut[(v * 255).round().astype(np.int64)]


def _resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(values, np.float32)
    if arr.shape == shape:
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(arr, mode="F").resize((shape[1], shape[0]), Image.BILINEAR))


def _crop_box(shape: tuple[int, int], max_size: int) -> tuple[slice, slice]:
    """A centred window of at most ``max_size`` per side."""
    h, w = shape
    ch, cw = min(h, max_size), min(w, max_size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def _as_labels(prediction: Any, shape: tuple[int, int], score_threshold: float) -> np.ndarray:
    if hasattr(prediction, "to_label_image"):
        return np.asarray(prediction.to_label_image(score_threshold=score_threshold))
    lab = np.asarray(prediction)
    if lab.shape != shape:
        raise ValueError(f"prediction label image has shape {lab.shape}, the image {shape}")
    return lab


def make_panel(
    image: np.ndarray,
    prediction: Any,
    extra_maps: Mapping[str, np.ndarray] | None = None,
    *,
    ground_truth: np.ndarray | None = None,
    score_threshold: float = 0.5,
    title: str | None = None,
    max_size: int = MAX_TILE,
    min_size: int = MIN_TILE,
    as_array: bool = False,
) -> bytes | np.ndarray:
    """One row of tiles: image | ground truth | prediction | each extra map; PNG bytes (or RGB array).

    Args:
        image: (C, H, W) or (H, W), any dtype (raw is fine: it is contrast-stretched).
        prediction: an (H, W) label image, or :class:`~weakseg.nn.instances.Instances` (pasted at
            ``score_threshold``, the higher score winning overlaps).
        extra_maps: name -> (h, w) float map in [0, 1]; resized to (H, W) when it differs.
        ground_truth: optional (H, W) label image, drawn as outlines.
        max_size: larger images are centre-cropped to this many pixels per side.
        min_size: smaller images are enlarged by an integer factor to about this size.
    """
    from PIL import Image, ImageDraw

    rgb = _to_display(image)
    shape = rgb.shape[:2]
    labels = _as_labels(prediction, shape, score_threshold)
    ys, xs = _crop_box(shape, max_size)
    rgb, labels = rgb[ys, xs], labels[ys, xs]
    gt = None if ground_truth is None else np.asarray(ground_truth)[ys, xs]
    maps = {name: _resize_map(values, shape)[ys, xs] for name, values in (extra_maps or {}).items()}
    # Small images are enlarged (nearest neighbour) so that outlines and titles stay legible.
    k = max(1, min(math.ceil(min_size / max(rgb.shape[:2])), max_size // max(rgb.shape[:2])))
    if k > 1:
        up = lambda a: np.repeat(np.repeat(a, k, axis=0), k, axis=1)  # noqa: E731
        rgb, labels = up(rgb), up(labels)
        gt = None if gt is None else up(gt)
        maps = {name: up(m) for name, m in maps.items()}
    tiles: list[tuple[str, np.ndarray]] = [("image", rgb)]
    if gt is not None:
        n_gt = len(np.unique(gt)) - int((gt == 0).any())
        tiles.append((f"ground truth ({n_gt})", _overlay(rgb, gt, 0.0)))
    n_pred = len(np.unique(labels)) - int((labels == 0).any())
    tiles.append((f"instances ({n_pred}, score>={score_threshold:g})", _overlay(rgb, labels, 0.35)))
    for name, values in maps.items():
        tiles.append((str(name).replace("_", " "), _colormap(values)))

    th, tw = tiles[0][1].shape[:2]
    top = _HEADER + (_HEADER if title else 0)
    canvas = Image.new("RGB", (len(tiles) * (tw + _GAP) + _GAP, top + th + _GAP), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_GAP, 3), title, fill=_TEXT)
    for k, (name, tile) in enumerate(tiles):
        x = _GAP + k * (tw + _GAP)
        canvas.paste(Image.fromarray(tile), (x, top))
        draw.text((x + 2, top - _HEADER + 3), name[: max(4, tw // 6)], fill=_TEXT)
    if as_array:
        return np.asarray(canvas)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# From a strategy
# ------------------------------------------------------------------------------------------------


def strategy_maps(
    strategy: Any, image: np.ndarray, *, scale: float = 1.0, group_index: int = 0, device: Any = "cpu"
) -> dict[str, np.ndarray]:
    """``strategy.panel`` maps for a raw (C, H, W) image, at the model's scale, returned at (H, W).

    The image is standardised and resized by ``scale`` as the Predictor does; ``group`` is passed
    when the strategy's ``panel`` accepts it (CKS: one collaborator head per cell line).
    """
    import torch
    import torch.nn.functional as F

    from weakseg.data.normalize import standardize

    panel_fn = getattr(strategy, "panel", None)
    if panel_fn is None:
        return {}
    x = torch.from_numpy(standardize(image))[None].to(device)
    h, w = x.shape[-2:]
    if scale != 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
    kwargs = {}
    try:
        if "group" in inspect.signature(panel_fn).parameters:
            kwargs["group"] = int(group_index)
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        pass
    with torch.no_grad():
        maps = panel_fn(x, **kwargs) or {}
    return {name: _resize_map(np.asarray(m, np.float32).squeeze(), (h, w)) for name, m in maps.items()}


def write_panel(
    strategy: Any,
    data_cfg: Any,
    split: str,
    path: str | Path,
    *,
    device: Any = "cpu",
    result: Any = None,
    score_threshold: float | None = None,
    max_size: int = MAX_TILE,
) -> Path:
    """Draw the figure for the first evaluated image and write it to ``path`` (PNG); returns the path.

    Uses ``result.sample`` (kept by :func:`~weakseg.eval.evaluate.evaluate_strategy`) when present,
    otherwise evaluates the first image of ``split`` itself.
    """
    from weakseg.devices import unwrap
    from weakseg.eval.evaluate import evaluate_strategy

    module = unwrap(strategy)
    sample = getattr(result, "sample", None)
    if score_threshold is None:
        score_threshold = float(getattr(result, "score_threshold", 0.5))
    if sample is None:
        sample = evaluate_strategy(module, data_cfg, split, 1, score_threshold, device).sample
    ys, xs = _crop_box(sample.image.shape[-2:], max_size)
    image = sample.image[..., ys, xs]
    prediction = _as_labels(sample.instances, sample.image.shape[-2:], score_threshold)[ys, xs]
    labels = None if sample.labels is None else sample.labels[ys, xs]
    was_training = bool(getattr(module, "training", False))
    try:
        maps = strategy_maps(module, image, scale=sample.scale, group_index=sample.group_index, device=device)
    finally:
        if hasattr(module, "train"):
            module.train(was_training)
    title = f"{sample.image_id} ({sample.group}, scale {sample.scale:g})"
    if result is not None and getattr(result, "overall", None):
        ap = result.overall.get("AP50", math.nan)
        dice = result.overall.get("dice", math.nan)
        title += f"   split {split}: AP50 {ap:.3f}, Dice {dice:.3f}"
    png = make_panel(
        image, prediction, maps, ground_truth=labels, score_threshold=score_threshold, title=title, max_size=max_size
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return out
