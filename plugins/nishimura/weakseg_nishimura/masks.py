"""From per-peak response maps to an instance label image (Nishimura-1, stage 5), and to ``Instances``.

Both variants start from the *assignment by maximum response* (each pixel goes to the peak whose
normalised response is largest there, if that response reaches ``response_threshold``):

- ``lite``: a cell is its assigned pixels; keep the component nearest the peak, fill holes.
- ``graphcut`` (the paper): per cell, a two-label graph cut whose foreground seeds are the cell's
  own strongly assigned pixels and whose background seeds are the other cells' pixels (and, a
  departure from the paper, pixels no cell responds to at all, ``empty_threshold``); keep the
  component nearest the peak, dilate (disk 2), fill holes, erode (disk 1); where two cells claim
  a pixel it goes to the nearer peak. To bound the cost, each cut runs in the bounding box of the
  cell's seeds grown by ``margin`` px, whose frame (where it is not the image border) is background
  (the paper cut the whole image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import disk

from weakseg_nishimura.graphcut import binary_graphcut

if TYPE_CHECKING:  # pragma: no cover
    from weakseg.nn.instances import Instances

_FOUR = ndi.generate_binary_structure(2, 1)


@attrs.frozen(kw_only=True)
class GraphCutParams:
    """Settings of the per-cell graph cut (thresholds apply to normalised responses)."""

    fg_seed_threshold: float = 0.2
    bg_seed_threshold: float = 0.1
    #: Pixels where every response is below this are background seeds too (no cell claims them).
    empty_threshold: float = 0.0
    min_seed_area: int = 3
    pairwise_weight: float = 20.0
    bias: float = 2e-4
    margin: int = 16
    smooth: bool = True


def component_nearest(mask: np.ndarray, point: tuple[float, float]) -> np.ndarray:
    """The connected component of ``mask`` (4-connected) containing, or else nearest to, ``point`` (y, x)."""
    labels, n = ndi.label(mask, structure=_FOUR)
    if n <= 1:
        return labels > 0
    py, px = int(np.floor(point[0])), int(np.floor(point[1]))
    h, w = mask.shape
    if 0 <= py < h and 0 <= px < w and labels[py, px] > 0:
        return labels == labels[py, px]
    ys, xs = np.nonzero(labels)
    d2 = (ys + 0.5 - point[0]) ** 2 + (xs + 0.5 - point[1]) ** 2
    return labels == labels[ys[np.argmin(d2)], xs[np.argmin(d2)]]


def _bbox(
    mask: np.ndarray, margin: int, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)
) -> tuple[slice, slice] | None:
    """Bounding box of ``mask`` (placed at ``offset`` in an image of ``shape``) grown by ``margin``, clipped."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    ys, xs = ys + offset[0], xs + offset[1]
    h, w = shape
    return (slice(max(ys.min() - margin, 0), min(ys.max() + 1 + margin, h)),
            slice(max(xs.min() - margin, 0), min(xs.max() + 1 + margin, w)))


def label_cells_lite(
    best: np.ndarray, owner: np.ndarray, locations: np.ndarray, *, response_threshold: float
) -> np.ndarray:
    """``lite`` variant: argmax ownership, component nearest the peak, holes filled. Label k+1 = peak k."""
    labels = np.zeros(owner.shape, np.int32)
    assigned = np.where(best >= response_threshold, owner, -1)
    slices = ndi.find_objects(assigned + 1)
    for k, sl in enumerate(slices[: len(locations)]):
        if sl is None:
            continue
        sub = assigned[sl] == k
        local = (locations[k][0] - sl[0].start, locations[k][1] - sl[1].start)
        cell = ndi.binary_fill_holes(component_nearest(sub, local))
        view = labels[sl]
        view[cell & (view == 0)] = k + 1
    return labels


def label_cells_graphcut(
    best: np.ndarray,
    owner: np.ndarray,
    locations: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray],
    *,
    response_threshold: float,
    params: GraphCutParams,
) -> np.ndarray:
    """``graphcut`` variant (the paper's): one two-label cut per cell, overlaps to the nearer peak.

    ``edges`` are the image's pairwise weights ``(right, down)`` from :func:`graphcut.edge_weights`.
    """
    shape = owner.shape
    assigned = np.where(best >= response_threshold, owner, -1)
    labels = np.zeros(shape, np.int32)
    fg_all = assigned >= 0
    strong_fg = best >= params.fg_seed_threshold
    strong_bg = best >= params.bg_seed_threshold
    for k, sl in enumerate(ndi.find_objects(assigned + 1)[: len(locations)]):
        if sl is None:
            continue
        own = (assigned[sl] == k) & strong_fg[sl]
        roi = _bbox(own, params.margin, shape, offset=(sl[0].start, sl[1].start))
        if roi is None:
            continue
        fg = (assigned[roi] == k) & strong_fg[roi]
        if params.min_seed_area > 1:
            comp, n = ndi.label(fg, structure=_FOUR)
            if n:
                sizes = np.bincount(comp.ravel())
                fg = (sizes >= params.min_seed_area)[comp] & (comp > 0)
        if not fg.any():
            continue
        fg = ndi.binary_fill_holes(fg)
        bg = ndi.binary_fill_holes(fg_all[roi] & (assigned[roi] != k) & strong_bg[roi])
        if params.empty_threshold > 0:
            bg |= best[roi] < params.empty_threshold
        bg &= ~fg
        bg |= _inner_frame(roi, shape) & ~fg
        cut = binary_graphcut(fg, bg, edges[0][roi], edges[1][roi], pairwise_weight=params.pairwise_weight,
                              bias=params.bias)
        local = (locations[k][0] - roi[0].start, locations[k][1] - roi[1].start)
        cell = component_nearest(cut, local)
        if params.smooth:
            cell = ndi.binary_dilation(cell, disk(2))
            cell = ndi.binary_fill_holes(cell)
            cell = ndi.binary_erosion(cell, disk(1))
        if not cell.any():
            continue
        _paste_nearer(labels, roi, cell, k, locations)
    return _clean_connectivity(labels, locations)


def _inner_frame(roi: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """The ROI's outermost rows/columns, except those lying on the image border (a cell may touch it)."""
    ys, xs = roi
    frame = np.zeros((ys.stop - ys.start, xs.stop - xs.start), bool)
    if ys.start > 0:
        frame[0, :] = True
    if ys.stop < shape[0]:
        frame[-1, :] = True
    if xs.start > 0:
        frame[:, 0] = True
    if xs.stop < shape[1]:
        frame[:, -1] = True
    return frame


def _paste_nearer(
    labels: np.ndarray, roi: tuple[slice, slice], cell: np.ndarray, k: int, locations: np.ndarray
) -> None:
    """Write cell k; pixels another cell already holds go to whichever of the two peaks is nearer."""
    view = labels[roi]
    free = cell & (view == 0)
    view[free] = k + 1
    clash = cell & (view > 0) & (view != k + 1)
    if not clash.any():
        return
    ys, xs = np.nonzero(clash)
    gy = ys + roi[0].start + 0.5
    gx = xs + roi[1].start + 0.5
    other = view[ys, xs] - 1
    d_own = (gy - locations[k][0]) ** 2 + (gx - locations[k][1]) ** 2
    d_other = (gy - locations[other, 0]) ** 2 + (gx - locations[other, 1]) ** 2
    win = d_own < d_other
    view[ys[win], xs[win]] = k + 1


def _clean_connectivity(labels: np.ndarray, locations: np.ndarray) -> np.ndarray:
    """Keep, for every label, only the component nearest its peak (overlap resolution can split cells)."""
    for idx, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        k = idx  # label idx + 1 belongs to peak idx
        sub = labels[sl] == k + 1
        local = (locations[k][0] - sl[0].start, locations[k][1] - sl[1].start)
        keep = component_nearest(sub, local)
        labels[sl][sub & ~keep] = 0
    return labels


def labels_to_instances(
    labels: np.ndarray,
    locations: torch.Tensor,
    scores: torch.Tensor,
    *,
    size: int | None = None,
    min_crop: int = 8,
    min_area: int = 1,
) -> Instances:
    """Instances whose masks are square crops of ``labels`` (label k+1 = peak k) around each cell.

    All crops of the image share one size S, centred on each cell's bounding box: ``size`` when
    given (a cell larger than that is clipped to it), else the largest bounding-box side + 2 (at
    least ``min_crop``). Peaks whose cell is empty (or below ``min_area`` pixels) are dropped.
    """
    from weakseg.nn.instances import Instances

    shape = tuple(int(s) for s in labels.shape)
    device = locations.device
    boxes = ndi.find_objects(labels, max_label=len(locations))
    keep = [k for k, sl in enumerate(boxes) if sl is not None and (labels[sl] == k + 1).sum() >= min_area]
    if not keep:
        return Instances.empty(shape, crop_size=min_crop, device=device)
    side = max(max(boxes[k][0].stop - boxes[k][0].start, boxes[k][1].stop - boxes[k][1].start) for k in keep)
    s = int(size) if size is not None else max(min_crop, side + 2)
    masks = np.zeros((len(keep), s, s), np.float32)
    origins = np.zeros((len(keep), 2), np.int64)
    for i, k in enumerate(keep):
        sy, sx = boxes[k]
        y0 = (sy.start + sy.stop) // 2 - s // 2
        x0 = (sx.start + sx.stop) // 2 - s // 2
        origins[i] = (y0, x0)
        # the part of the crop that lies inside both the image and the cell's box
        ya, yb = max(y0, sy.start), min(y0 + s, sy.stop)
        xa, xb = max(x0, sx.start), min(x0 + s, sx.stop)
        masks[i, ya - y0 : yb - y0, xa - x0 : xb - x0] = labels[ya:yb, xa:xb] == k + 1
    index = torch.as_tensor(keep, dtype=torch.long, device=device)
    return Instances(
        scores=scores[index].float(),
        locations=locations[index].float(),
        masks=torch.from_numpy(masks).to(device),
        origins=torch.from_numpy(origins).to(device),
        image_shape=shape,
    )
