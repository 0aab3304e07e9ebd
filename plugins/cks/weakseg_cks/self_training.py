"""Self-training for partial point sets: the principal's confident detections become extra points.

A detection is a candidate *pseudo point* when it scores at least the threshold and lies farther than
a distance from every labelled point of its image. Two filters keep the candidates honest:

- **one cell, one point** (``separate``): the principal segments every labelled point and every
  candidate; a candidate that lies inside the predicted mask of a labelled point or of a better
  candidate, or whose own mask holds one of those points, is the same cell seen twice (a large or
  elongated cell splits into several detections) and is dropped. A point-distance rule alone cannot
  tell a neighbour from a second detection on the same cell: the cells differ in size;
- **where** (``allowed``): an image whose points are complete inside its annotated region can
  keep pseudo points out of it, so they go only where nobody clicked;
- **a cap** (``limit``): at most ``ceil(limit x labelled points)`` per image (training crop), best
  scores first, so a detector that fires on texture cannot flood the losses with false instances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: ``segment(locations per image) -> (logits (M, S, S), origins (M, 2))`` in the order given.
Segmenter = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def pseudo_points(
    detections: Sequence[tuple[torch.Tensor, torch.Tensor]],
    points: Sequence[torch.Tensor],
    *,
    threshold: float,
    distance: float,
    limit: float | None = None,
    segment: Segmenter | None = None,
    allowed: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """Confident detections that are new cells: (K_b, 2) per image, best scores first.

    ``detections`` are (scores, locations) per image; a detection is kept when its score is at least
    ``threshold``, it lies on a true pixel of its image's ``allowed`` mask (H, W) (when given; None
    for an image allows every pixel), no point of its image lies within ``distance`` pixels, it is a
    cell of its own by the masks of ``segment`` (when given: see :func:`distinct_cells`) and it is
    among the best ``ceil(limit * points of the image)`` (no cap when ``limit`` is None).
    """
    candidates = []
    masks = list(allowed) if allowed is not None else [None] * len(points)
    for (scores, locs), pts, mask in zip(detections, points, masks, strict=True):
        keep = scores >= threshold
        if mask is not None and locs.shape[0]:
            h, w = mask.shape
            pix = torch.floor(locs.detach()).long()
            keep = keep & mask[pix[:, 0].clamp(0, h - 1), pix[:, 1].clamp(0, w - 1)].to(keep.device).bool()
        scores, locs = scores[keep].detach(), locs[keep].detach().float()
        if locs.shape[0] and pts.shape[0]:
            far = torch.cdist(locs, pts.to(locs).reshape(-1, 2)).min(1).values >= distance
            scores, locs = scores[far], locs[far]
        candidates.append(locs[torch.sort(scores, descending=True, stable=True).indices])
    if segment is not None and any(c.shape[0] for c in candidates):
        candidates = distinct_cells(points, candidates, segment)
    if limit is None:
        return candidates
    return [c[: math.ceil(limit * int(p.shape[0]) - 1e-9)] for c, p in zip(candidates, points, strict=True)]


def distinct_cells(
    points: Sequence[torch.Tensor], candidates: Sequence[torch.Tensor], segment: Segmenter
) -> list[torch.Tensor]:
    """The candidates (best first) that are not the same cell as a labelled point or a better candidate.

    Two locations are the same cell when either lies inside the other's predicted mask (logit > 0).
    Candidates are taken in order; each kept one blocks the later ones it shares a cell with.
    """
    pts = [p.detach().float().reshape(-1, 2).to(c.device) for p, c in zip(points, candidates, strict=True)]
    logits, origins = segment([torch.cat([p, c]) for p, c in zip(pts, candidates, strict=True)])
    logits, origins = logits.detach(), origins.detach()
    out, start = [], 0
    for p, c in zip(pts, candidates, strict=True):
        n, k = p.shape[0], c.shape[0]
        locs = torch.cat([p, c])
        same = _inside(locs, logits[start : start + n + k], origins[start : start + n + k])
        same = same | same.T
        start += n + k
        kept: list[int] = []
        for j in range(k):
            row = same[n + j]
            if not bool(row[:n].any()) and not any(bool(row[n + i]) for i in kept):
                kept.append(j)
        out.append(c[kept])
    return out


def _inside(locations: torch.Tensor, logits: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
    """(Q, M) bool: location q lies in a pixel of instance m's crop where its mask logit is > 0."""
    q, m = locations.shape[0], logits.shape[0]
    if q == 0 or m == 0:
        return torch.zeros(q, m, dtype=torch.bool, device=locations.device)
    size = logits.shape[-1]
    pix = torch.floor(locations).long()  # (Q, 2) pixel indices (centres at i + 0.5)
    rel = pix[:, None, :] - origins[None, :, :]  # (Q, M, 2)
    valid = ((rel >= 0) & (rel < size)).all(-1)
    rel = rel.clamp(0, size - 1)
    value = logits[torch.arange(m, device=logits.device)[None, :].expand(q, m), rel[..., 0], rel[..., 1]]
    eye = torch.eye(q, m, dtype=torch.bool, device=locations.device)
    return valid & (value > 0) & ~eye
