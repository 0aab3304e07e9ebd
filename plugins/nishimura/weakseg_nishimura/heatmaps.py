"""Training targets of Nishimura-1: cell-likelihood maps made from point labels.

Following the paper (MICCAI 2019) and its code: one Gaussian of standard deviation ``sigma`` per
annotated cell, peak value 1, combined with a pixel-wise **maximum** (not a sum), so that every
cell's peak is 1 however close its neighbours are. Points are (y, x) with pixel centres at i + 0.5.
"""

from __future__ import annotations

import torch


def gaussian_heatmap(points: torch.Tensor, shape: tuple[int, int], sigma: float, chunk: int = 64) -> torch.Tensor:
    """Max-combined Gaussians (H, W) in [0, 1] for points (N, 2) (y, x); zeros when N = 0.

    Each Gaussian is separable, so a chunk of points costs (n, H) + (n, W) exponentials plus an
    outer product; chunks keep the memory at ``chunk * H * W`` floats.
    """
    h, w = shape
    device = points.device
    out = torch.zeros(h, w, device=device, dtype=torch.float32)
    if points.numel() == 0:
        return out
    pts = points.reshape(-1, 2).to(torch.float32)
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    inv = -0.5 / float(sigma) ** 2
    for start in range(0, pts.shape[0], chunk):
        p = pts[start : start + chunk]
        gy = torch.exp(inv * (ys[None, :] - p[:, :1]) ** 2)  # (n, H)
        gx = torch.exp(inv * (xs[None, :] - p[:, 1:]) ** 2)  # (n, W)
        out = torch.maximum(out, (gy[:, :, None] * gx[:, None, :]).amax(dim=0))
    return out


def batch_heatmaps(points: list[torch.Tensor], shape: tuple[int, int], sigma: float) -> torch.Tensor:
    """Targets (B, 1, H, W) for a batch of point lists (one (N_b, 2) tensor per image)."""
    return torch.stack([gaussian_heatmap(p, shape, sigma) for p in points])[:, None]
