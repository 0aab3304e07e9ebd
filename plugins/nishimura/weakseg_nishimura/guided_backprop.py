"""Guided backpropagation from detected peaks to the input (Nishimura-1, stage 4, "propagation").

Nishimura, Ker & Bise (MICCAI 2019) back-propagate the detection output of each cell's region to
the input image through *guided* ReLUs (Springenberg et al. 2015: a ReLU passes a gradient only
where its forward input was positive **and** the incoming gradient is positive). The positive part
of the channel-summed input gradient is that cell's response map.

This module does the same, batched over peaks: each peak gets a copy of the input (a window
around it, or the whole image when ``window`` is ``None``), the copies go through the network in
one forward pass, and one backward pass with per-copy output masks yields every peak's map at once
(``torch.autograd.grad`` with ``grad_outputs`` = the stacked region masks). The batch norm layers
are frozen (eval mode), so the copies do not interact.

Windows are an approximation the paper does not make: the network sees a window of context
instead of the whole image. With a window several times the region radius the response, which
decays with distance from the region, is essentially unchanged and the cost drops from
K whole-image passes to K small ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn


class GuidedReLUFunction(torch.autograd.Function):
    """ReLU forward; backward passes the gradient only where input > 0 and gradient > 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd signature
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype)


class GuidedReLU(nn.Module):
    """A drop-in ``nn.ReLU`` replacement with the guided backward rule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GuidedReLUFunction.apply(x)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace every ``nn.ReLU`` in ``model`` by :class:`GuidedReLU` and set eval mode.

    The original modules and the training flag are restored on exit, even after an error.
    """
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.ReLU)
    ]
    was_training = model.training
    model.eval()
    for parent, name, _ in swaps:
        setattr(parent, name, GuidedReLU())
    try:
        yield model
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)
        model.train(was_training)


def output_regions(locations: torch.Tensor, shape: tuple[int, int], radius: float) -> np.ndarray:
    """Per-peak output regions (H, W) int64: index of the nearest peak within ``radius`` px, else -1.

    With one shared sigma, the argmax over per-peak Gaussians of the paper is exactly this Voronoi
    partition; its cut-off (un-normalised Gaussian below 0.01) is a radius of about 2.6 sigma.
    """
    h, w = shape
    regions = np.full((h, w), -1, np.int64)
    if len(locations) == 0:
        return regions
    pix = pixel_indices(locations, shape)
    seeds = np.full((h, w), -1, np.int64)
    seeds[pix[:, 0], pix[:, 1]] = np.arange(len(pix))
    dist, (iy, ix) = ndi.distance_transform_edt(seeds < 0, return_indices=True)
    nearest = seeds[iy, ix]
    regions[dist <= radius] = nearest[dist <= radius]
    return regions


def pixel_indices(locations: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """(y, x) pixel-centre coordinates -> integer pixel indices (K, 2), clipped into the image."""
    pts = np.floor(locations.detach().cpu().numpy().reshape(-1, 2)).astype(np.int64)
    pts[:, 0] = pts[:, 0].clip(0, shape[0] - 1)
    pts[:, 1] = pts[:, 1].clip(0, shape[1] - 1)
    return pts


def window_origins(pix: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Top-left corners (K, 2) of ``size`` windows centred on ``pix`` and shifted to lie inside the image."""
    h, w = shape
    wh, ww = size
    y0 = (pix[:, 0] - wh // 2).clip(0, h - wh)
    x0 = (pix[:, 1] - ww // 2).clip(0, w - ww)
    return np.stack([y0, x0], axis=1)


def guided_responses(
    model: nn.Module,
    image: torch.Tensor,
    locations: torch.Tensor,
    regions: np.ndarray,
    *,
    window: int | None = 128,
    batch_size: int = 16,
    sign: str = "positive",
    bf16: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Guided-backprop response maps of every peak, computed in windows.

    ``model`` maps (B, C, h, w) -> heatmap logits (B, 1, h, w) (the sigmoid is applied here, as in
    the paper). ``image`` is one standardised image (C, H, W); ``locations`` (K, 2) the peaks;
    ``regions`` the (H, W) map from :func:`output_regions`. Returns ``(maps (K, wh, ww) >= 0,
    origins (K, 2))`` where map k covers image pixels ``origins[k] + [0, wh) x [0, ww)``.
    ``window`` None means the whole image. Gradients with respect to the parameters are neither
    computed nor accumulated; the caller's grad mode (``no_grad``, ``inference_mode``) does not matter.
    ``bf16`` runs the passes in bfloat16 autocast (about twice as fast on CPUs with AVX512-BF16/AMX;
    the normalised maps differ by ~1-2 %); the maps are returned in float32 either way.
    """
    c, h, w = image.shape
    k = len(locations)
    size = (h, w) if window is None else (min(window, h), min(window, w))
    if k == 0:
        return torch.zeros(0, *size, device=image.device), np.zeros((0, 2), np.int64)
    pix = pixel_indices(locations, (h, w))
    origins = window_origins(pix, (h, w), size)
    region_t = torch.from_numpy(regions).to(image.device)
    maps = []
    frozen = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(False), torch.enable_grad(), guided_relus(model), _frozen(frozen), autocast:
        base = image.detach().clone()
        for start in range(0, k, batch_size):
            idx = range(start, min(start + batch_size, k))
            crops, masks = [], []
            for i in idx:
                y0, x0 = (int(v) for v in origins[i])
                crops.append(base[:, y0 : y0 + size[0], x0 : x0 + size[1]])
                masks.append(region_t[y0 : y0 + size[0], x0 : x0 + size[1]] == i)
            x = torch.stack(crops).requires_grad_(True)
            out = torch.sigmoid(model(x))
            grad_out = torch.stack(masks)[:, None].to(out.dtype)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=grad_out)
            maps.append(_signed(grad.float().sum(dim=1).detach(), sign))
    return torch.cat(maps), origins


@contextmanager
def _frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """No parameter gradients while the responses are computed (only the input's are needed)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _signed(grad: torch.Tensor, sign: str) -> torch.Tensor:
    if sign == "positive":
        return grad.clamp(min=0)
    if sign == "negative":
        return (-grad).clamp(min=0)
    if sign == "abs":
        return grad.abs()
    raise ValueError(f"unknown response sign {sign!r} (expected 'positive', 'negative' or 'abs')")


def normalise_responses(maps: torch.Tensor, mode: str, quantile: float = 0.995) -> torch.Tensor:
    """Scale each response map so that thresholds transfer between datasets and networks.

    ``max``: divide by the map's maximum; ``quantile``: divide by the ``quantile`` of its positive
    values and clip at 1 (robust to a few hot pixels); ``none``: raw gradients. The paper used raw
    gradients with fixed thresholds, which depend on the network and the data.
    """
    if mode == "none" or maps.numel() == 0:
        return maps
    flat = maps.flatten(1)
    if mode == "max":
        scale = flat.amax(dim=1)
    elif mode == "quantile":
        scale = torch.stack([
            torch.quantile(row[row > 0], quantile) if bool((row > 0).any()) else row.new_zeros(()) for row in flat
        ])
    else:
        raise ValueError(f"unknown response normalisation {mode!r} (expected 'max', 'quantile' or 'none')")
    out = maps / scale.clamp(min=1e-12)[:, None, None]
    return out.clamp(max=1.0) if mode == "quantile" else out


def blur_responses(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of each map (guided-backprop maps are speckled at the pixel scale)."""
    if sigma <= 0 or maps.numel() == 0:
        return maps
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate"),
                                   kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, radius, radius), mode="replicate"),
                                   kernel.view(1, 1, -1, 1))
    return x[:, 0]


def assign_by_max_response(
    maps: torch.Tensor, origins: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Assignment by maximum response: ``(best value (H, W) float32, owner (H, W) int64, -1 = none)``.

    A pixel belongs to the peak whose (normalised) response there is largest; pixels no map covers
    or where every response is 0 have owner -1.
    """
    h, w = shape
    best = np.zeros((h, w), np.float32)
    owner = np.full((h, w), -1, np.int64)
    if len(maps) == 0:
        return best, owner
    arr = maps.detach().float().cpu().numpy()
    wh, ww = arr.shape[1:]
    for i, (y0, x0) in enumerate(origins):
        view_best = best[y0 : y0 + wh, x0 : x0 + ww]
        view_owner = owner[y0 : y0 + wh, x0 : x0 + ww]
        take = arr[i] > view_best
        view_best[take] = arr[i][take]
        view_owner[take] = i
    return best, owner
