"""Peak detection on a predicted heatmap (Nishimura-1, stage 3).

Local maxima above an absolute threshold, at least ``min_distance`` pixels apart (a max-pool
non-maximum suppression, as ``skimage.feature.peak_local_max`` does). Like the paper's code, a
plateau of equal maxima is merged into one peak at the centroid of its connected component.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi


def find_peaks(heatmap: torch.Tensor, threshold: float, min_distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of an (H, W) heatmap: ``(locations (K, 2) float (y, x) pixel centres, heights (K,))``.

    Peaks are sorted by decreasing height. ``threshold`` is absolute (heatmaps lie in [0, 1]);
    ``min_distance`` is the half-width of the suppression window (Chebyshev distance, pixels).
    """
    heat = heatmap.detach().float()
    k = 2 * max(int(min_distance), 0) + 1
    pooled = F.max_pool2d(heat[None, None], k, stride=1, padding=k // 2)[0, 0]
    is_peak = (heat >= pooled) & (heat >= threshold)
    mask = is_peak.cpu().numpy()
    if not mask.any():
        return torch.zeros(0, 2, device=heatmap.device), torch.zeros(0, device=heatmap.device)
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    index = np.arange(1, n + 1)
    centres = np.asarray(ndi.center_of_mass(mask, labels, index), dtype=np.float32).reshape(n, 2)
    heat_np = heat.cpu().numpy()
    heights = np.asarray(ndi.maximum(heat_np, labels, index), dtype=np.float32).reshape(n)
    order = np.argsort(-heights, kind="stable")
    locations = torch.from_numpy(centres[order] + 0.5).to(heatmap.device)
    return locations, torch.from_numpy(heights[order]).to(heatmap.device)
