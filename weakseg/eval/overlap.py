"""Sparse overlap between predicted and ground-truth instances, and the matchings built on it.

IoUs come from a sparse contingency table (``np.bincount`` / ``np.unique`` on label pairs), never
from a loop over instance pairs: a LIVECell image has up to ~2000 cells and ~3000 predictions.
Inputs are label images (:func:`overlap_from_labels`), pixel lists (:func:`overlap_from_pixels`) or
:class:`~weakseg.nn.instances.Instances` with overlapping masks (:func:`overlap_from_instances`).
:func:`greedy_match` is the score-ordered matching of the CKS paper's AP and of COCO;
:func:`max_matching_count` the maximum one-to-one matching of F1 / accuracy (see weakseg.eval.metrics).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

# ------------------------------------------------------------------------------------------------
# Sparse overlap between predictions and ground truth
# ------------------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class Overlap:
    """Sparse intersection table of one image: ``n_pred`` predictions x ``n_gt`` ground-truth instances.

    Only pairs that share at least one pixel are stored (``pred``, ``gt``, ``intersection``, each
    of length K, unique pairs). Areas count pixels inside the image.
    """

    pred: np.ndarray  # (K,) int64 prediction index
    gt: np.ndarray  # (K,) int64 ground-truth index
    intersection: np.ndarray  # (K,) int64, > 0
    pred_areas: np.ndarray  # (n_pred,) int64
    gt_areas: np.ndarray  # (n_gt,) int64

    @property
    def n_pred(self) -> int:
        return int(self.pred_areas.shape[0])

    @property
    def n_gt(self) -> int:
        return int(self.gt_areas.shape[0])

    def iou(self) -> np.ndarray:
        """IoU of every stored pair, float64 ``I / (|P| + |G| - I)``."""
        inter = self.intersection.astype(np.float64)
        union = self.pred_areas[self.pred] + self.gt_areas[self.gt] - self.intersection
        return inter / union.astype(np.float64)

    def dense(self, kind: str = "iou") -> np.ndarray:
        """Dense (n_pred, n_gt) matrix of IoUs (``kind="iou"``) or intersections (``"intersection"``)."""
        out = np.zeros((self.n_pred, self.n_gt), np.float64 if kind == "iou" else np.int64)
        out[self.pred, self.gt] = self.iou() if kind == "iou" else self.intersection
        return out

    def take_predictions(self, index: np.ndarray) -> Overlap:
        """The overlap of the predictions ``index`` (a subset and/or reordering), renumbered 0..len-1."""
        index = np.asarray(index, dtype=np.int64)
        new = np.full(self.n_pred, -1, np.int64)
        new[index] = np.arange(index.size)
        keep = new[self.pred] >= 0
        return Overlap(
            pred=new[self.pred[keep]],
            gt=self.gt[keep],
            intersection=self.intersection[keep],
            pred_areas=self.pred_areas[index],
            gt_areas=self.gt_areas,
        )


def _compact_labels(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (sorted, non-zero) and areas of a flat integer label array."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(flat.max())
    if int(flat.min()) < 0:
        raise ValueError("label images must not hold negative values (0 = background, 1..N = instances)")
    if top <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        return ids.astype(np.int64), counts[ids].astype(np.int64)
    ids, counts = np.unique(flat[flat != 0], return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


def _index_of(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``values`` in the sorted array ``ids`` (all values are present)."""
    if ids.size and int(ids[-1]) <= 4 * max(values.size, 1) + 1024:
        lut = np.zeros(int(ids[-1]) + 1, np.int64)
        lut[ids] = np.arange(ids.size)
        return lut[values]
    return np.searchsorted(ids, values).astype(np.int64)


def _as_label_image(labels: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D label image (H, W), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{what} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _pairs(pred_idx: np.ndarray, gt_idx: np.ndarray, n_pred: int, n_gt: int) -> tuple[np.ndarray, ...]:
    """Unique (pred, gt) pairs and their pixel counts from per-pixel index arrays."""
    if pred_idx.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    n_cells = n_pred * n_gt
    key = pred_idx * n_gt + gt_idx
    if n_cells <= max(4 * key.size, 1 << 20):
        counts = np.bincount(key, minlength=n_cells)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(key, return_counts=True)
    return (keys // n_gt).astype(np.int64), (keys % n_gt).astype(np.int64), inter.astype(np.int64)


def overlap_from_labels(gt_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[Overlap, np.ndarray, np.ndarray]:
    """Sparse overlap of two label images (0 = background).

    Returns ``(overlap, gt_ids, pred_ids)``: instance ``i`` of the overlap is label ``gt_ids[i]``
    (resp. ``pred_ids[i]``); ids are the sorted non-zero labels present in each image.
    """
    gt = _as_label_image(gt_labels, "ground-truth labels")
    pr = _as_label_image(pred_labels, "predicted labels")
    if gt.shape != pr.shape:
        raise ValueError(f"label images differ in shape: ground truth {gt.shape}, prediction {pr.shape}")
    g, p = gt.ravel(), pr.ravel()
    gt_ids, gt_areas = _compact_labels(g)
    pred_ids, pred_areas = _compact_labels(p)
    both = (g != 0) & (p != 0)
    pi, gi, inter = _pairs(
        _index_of(p[both], pred_ids), _index_of(g[both], gt_ids), pred_ids.size, gt_ids.size
    )
    return Overlap(pi, gi, inter, pred_areas, gt_areas), gt_ids, pred_ids


def overlap_from_pixels(
    gt_labels: np.ndarray, pred_index: np.ndarray, pixel_index: np.ndarray, n_pred: int
) -> tuple[Overlap, np.ndarray]:
    """Sparse overlap of possibly *overlapping* predicted masks with a ground-truth label image.

    Prediction ``pred_index[j]`` covers flat pixel ``pixel_index[j]`` (``y * W + x``, inside the
    image); each (prediction, pixel) pair must occur once. Returns ``(overlap, gt_ids)``.
    """
    gt = _as_label_image(gt_labels, "ground-truth labels")
    g = gt.ravel()
    gt_ids, gt_areas = _compact_labels(g)
    pred_index = np.asarray(pred_index, dtype=np.int64)
    pixel_index = np.asarray(pixel_index, dtype=np.int64)
    pred_areas = np.bincount(pred_index, minlength=n_pred).astype(np.int64)
    gv = g[pixel_index]
    hit = gv != 0
    pi, gi, inter = _pairs(pred_index[hit], _index_of(gv[hit], gt_ids), n_pred, gt_ids.size)
    return Overlap(pi, gi, inter, pred_areas, gt_areas), gt_ids


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
        return x.numpy()
    return np.asarray(x)


def overlap_from_instances(
    gt_labels: np.ndarray, instances: Any, mask_threshold: float = 0.5, chunk: int = 256
) -> tuple[Overlap, np.ndarray]:
    """Overlap of :class:`~weakseg.nn.instances.Instances` (overlapping crops) with ground truth.

    Each crop is binarised at ``mask_threshold`` and clipped to the image (pixels outside the image
    count neither in the area nor the intersection: they cannot be checked against the ground truth).
    This is how the CKS reference scores its model (masks are not pasted into one label image).
    Returns ``(overlap, scores)`` with scores as float64 in instance order.
    """
    gt = _as_label_image(gt_labels, "ground-truth labels")
    h, w = gt.shape
    shape = tuple(int(s) for s in getattr(instances, "image_shape", (0, 0)))
    if shape not in ((0, 0), (h, w)):
        raise ValueError(f"instances are for an image of shape {shape}, ground truth has shape {(h, w)}")
    scores = _to_numpy(instances.scores).astype(np.float64).reshape(-1)
    n = scores.size
    origins = _to_numpy(instances.origins).astype(np.int64).reshape(-1, 2)
    preds, pixels = [], []
    for start in range(0, n, chunk):
        m = _to_numpy(instances.masks[start : start + chunk]) >= mask_threshold
        k, a, b = np.nonzero(m)
        y = origins[start + k, 0] + a
        x = origins[start + k, 1] + b
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        preds.append(start + k[inside])
        pixels.append(y[inside] * w + x[inside])
    pred_index = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    pixel_index = np.concatenate(pixels) if pixels else np.zeros(0, np.int64)
    overlap, _ = overlap_from_pixels(gt, pred_index, pixel_index, n)
    return overlap, scores


# ------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------


def greedy_match(
    pred: np.ndarray,
    gt: np.ndarray,
    value: np.ndarray,
    n_pred: int,
    *,
    ties: str = "first",
    gt_ignore: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy one-to-one matching over candidate pairs; predictions in index order (= rank).

    Each prediction takes the candidate ground truth with the largest ``value`` among those not
    taken yet (``ties="first"``: the lowest gt index wins a tie, as ``argmax`` in the CKS reference;
    ``"last"``: the highest, as the ``<`` test in pycocotools). With ``gt_ignore`` (COCO), a free
    non-ignored candidate is always preferred over an ignored one. Candidates must already pass the
    IoU threshold. Returns the matched gt index per prediction, -1 where none.
    """
    match = np.full(n_pred, -1, np.int64)
    if pred.size == 0:
        return match
    per_pred = np.bincount(pred, minlength=n_pred)
    if per_pred.max() <= 1:
        # Each prediction has at most one candidate: the highest-ranked claimant of a gt gets it.
        order = np.argsort(pred, kind="stable")
        p_sorted, g_sorted = pred[order], gt[order]
        _, first = np.unique(g_sorted, return_index=True)
        match[p_sorted[first]] = g_sorted[first]
        return match
    order = np.lexsort((gt, pred))
    p_sorted, g_sorted, v_sorted = pred[order], gt[order], value[order]
    starts = np.searchsorted(p_sorted, np.arange(n_pred))
    ends = np.searchsorted(p_sorted, np.arange(n_pred), side="right")
    taken: set[int] = set()
    ignore = None if gt_ignore is None else np.asarray(gt_ignore, bool)
    for p in np.flatnonzero(per_pred):
        gs = g_sorted[starts[p] : ends[p]].tolist()
        vs = v_sorted[starts[p] : ends[p]].tolist()
        free = [(g, v) for g, v in zip(gs, vs, strict=True) if g not in taken]
        if not free:
            continue
        if ignore is not None:
            regular = [(g, v) for g, v in free if not ignore[g]]
            free = regular or free
        best_g, best_v = free[0]
        for g, v in free[1:]:  # free is in increasing gt order
            if v > best_v or (ties == "last" and v == best_v):
                best_g, best_v = g, v
        match[p] = best_g
        taken.add(best_g)
    return match


def max_matching_count(pred: np.ndarray, gt: np.ndarray, n_pred: int, n_gt: int) -> int:
    """Size of a maximum one-to-one matching over the candidate pairs (Hopcroft-Karp via scipy)."""
    if pred.size == 0:
        return 0
    if np.bincount(pred).max() <= 1 and np.bincount(gt).max() <= 1:
        return int(pred.size)
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    graph = csr_matrix((np.ones(pred.size, np.int8), (pred, gt)), shape=(n_pred, n_gt))
    matched = maximum_bipartite_matching(graph, perm_type="column")
    return int(np.count_nonzero(matched >= 0))


def first_by(primary: np.ndarray, secondary_desc: np.ndarray, tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each value of ``primary``: the row with the largest ``secondary_desc`` (ties: smallest tiebreak)."""
    order = np.lexsort((tiebreak, -secondary_desc, primary))
    keys, first = np.unique(primary[order], return_index=True)
    return keys, order[first]
