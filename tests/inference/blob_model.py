"""A real, training-free principal model for inference tests: bright blobs by threshold + components.

Its answer is known exactly, so tiling, rescaling and stitching can be checked against the untiled
result. Like the paper's model it returns one fixed-size mask crop per instance around the
instance's location (floor(location) - S/2), zero outside the input image.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from weakseg.nn.instances import Instances


class BlobModel(torch.nn.Module):
    """Instances = connected components of (mean over channels) > ``threshold``; score from the area."""

    def __init__(self, threshold: float = 1.0, crop_size: int = 48) -> None:
        super().__init__()
        self.threshold = threshold
        self.crop_size = crop_size
        self.calls: list[tuple[int, ...]] = []

    def predict(self, image: torch.Tensor) -> list[Instances]:
        self.calls.append(tuple(image.shape))
        return [self._one(im.float().mean(0).cpu().numpy()) for im in image]

    def _one(self, img: np.ndarray) -> Instances:
        h, w = img.shape
        s = self.crop_size
        comp, n = ndimage.label(img > self.threshold)
        if n == 0:
            return Instances.empty((h, w), s)
        idx = np.arange(1, n + 1)
        cy, cx = np.array(ndimage.center_of_mass(np.ones_like(img), comp, idx)).T
        areas = ndimage.sum(np.ones_like(img), comp, idx)
        locs = np.stack([cy + 0.5, cx + 0.5], 1)
        origins = np.floor(locs).astype(np.int64) - s // 2
        masks = np.zeros((n, s, s), np.float32)
        for k in range(n):
            y0, x0 = origins[k]
            ya, yb, xa, xb = max(y0, 0), min(y0 + s, h), max(x0, 0), min(x0 + s, w)
            masks[k, ya - y0 : yb - y0, xa - x0 : xb - x0] = comp[ya:yb, xa:xb] == k + 1
        scores = 1.0 - 1.0 / (1.0 + areas / 50.0)
        return Instances(
            torch.as_tensor(scores, dtype=torch.float32),
            torch.as_tensor(locs, dtype=torch.float32),
            torch.from_numpy(masks),
            torch.from_numpy(origins),
            (h, w),
        )


def disc_image(
    shape: tuple[int, int],
    n: int,
    seed: int = 0,
    radius: tuple[float, float] = (5, 12),
    channels: int = 1,
    dtype: type = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, H, W), true labels (H, W)) with ``n`` non-touching bright discs on a noisy dark background."""
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    placed: list[tuple[float, float, float]] = []
    tries = 0
    while len(placed) < n and tries < 100 * n:
        tries += 1
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if any((cy - py) ** 2 + (cx - px) ** 2 < (r + pr + 3) ** 2 for py, px, pr in placed):
            continue
        placed.append((cy, cx, r))
    for k, (cy, cx, r) in enumerate(placed):
        y0, y1 = int(max(cy - r - 1, 0)), int(min(cy + r + 2, h))
        x0, x1 = int(max(cx - r - 1, 0)), int(min(cx + r + 2, w))
        sub = (yy[y0:y1, x0:x1] + 0.5 - cy) ** 2 + (xx[y0:y1, x0:x1] + 0.5 - cx) ** 2 <= r * r
        labels[y0:y1, x0:x1][sub] = k + 1
    base = rng.normal(100, 5, size=(channels, h, w))
    image = base + 400.0 * (labels > 0)[None]
    return np.clip(image, 0, None).astype(dtype), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images have the same instances (IDs may differ)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# ------------------------------------------------------------------------------------------------
# The blob model as a registered strategy, so that real checkpoints of it can be written and loaded
# ------------------------------------------------------------------------------------------------

import attrs  # noqa: E402

from weakseg.hookspecs import hookimpl  # noqa: E402

STRATEGY = "blob_test"


@attrs.frozen(kw_only=True)
class BlobStrategyConfig:
    """Bright blobs by threshold + connected components (inference tests)."""

    threshold: float = 1.0
    crop_size: int = 48

    def build(self, recipe, data):
        from weakseg.strategy import StrategyModule

        class BlobStrategy(StrategyModule):
            trainable = False

            def __init__(self, cfg: BlobStrategyConfig) -> None:
                super().__init__()
                self.model = BlobModel(cfg.threshold, cfg.crop_size)
                self.register_buffer("threshold", torch.tensor(cfg.threshold))

            def principal(self):
                return self.model

        return BlobStrategy(self)


@hookimpl
def weakseg_register_strategies(registry):
    registry.add(STRATEGY, BlobStrategyConfig)


def write_blob_checkpoint(
    path, in_channels: int = 1, recipe_extra: dict | None = None, input_scale: dict | None = None
):
    """A real weakseg checkpoint (engine format) of the blob strategy."""
    import yaml

    from weakseg.build import build_strategy
    from weakseg.checkpoint import make_payload, save_checkpoint
    from weakseg.components import DataSummary
    from weakseg.recipe import recipe_from_yaml_text

    text = yaml.safe_dump(
        {"name": "blob", "data": {"store": "unused.zarr"}, "strategy": {"type": STRATEGY}, **(recipe_extra or {})}
    )
    recipe = recipe_from_yaml_text(text)
    summary = DataSummary(in_channels=in_channels)
    strategy = build_strategy(recipe, summary)
    payload = make_payload(
        recipe_yaml=recipe.to_yaml(),
        data_summary=summary,
        state_dict=strategy.state_dict(),
        step=0,
        input_scale=input_scale,
    )
    return save_checkpoint(payload, path)
