"""Instance-segmentation metrics on label images (or overlapping instance masks) with per-instance scores.

Four families, all pooled over a dataset and computable per group (cell line):

- **Unsmoothed AP** at IoU 0.5 and 0.75 and **mAP** over 0.5:0.05:0.95, as in the CKS paper
  (Li et al., IEEE TMI 2023, eq. 9: ``AP = sum_k T_k P_k / C``) and its reference code: per image,
  predictions in decreasing score order each take the best *remaining* ground-truth instance by IoU
  (ties: the lowest ground-truth index); it is a true positive when that IoU is **strictly greater**
  than the threshold, and the ground truth is then removed. Over the dataset all predictions are
  ranked by score, ``P_k`` is the precision of the first k, and AP is the sum of ``P_k`` at the true
  positives divided by the number of ground-truth instances (no precision-envelope smoothing).
- **COCO mask AP** with the LIVECell settings (maxDets 2000; area ranges small < 18^2, medium
  18^2-31^2, large > 31^2 px). Per-image matching follows ``pycocotools.COCOeval.evaluateImg``
  rule for rule (IoU >= t, non-ignored ground truth preferred, ties to the later ground truth) but
  on the sparse overlap, because the pure-Python loop of pycocotools is O(D x G) per image and
  threshold (minutes per LIVECell image); the accumulation into precision/recall tables is
  ``pycocotools.COCOeval.accumulate`` itself. Tests check the whole path against a plain
  ``COCOeval`` run on RLE masks.
- **Instance Dice**, area weighted (the paper's eq. 15): with predictions of score >= the score
  threshold, each prediction is matched to the ground truth it overlaps most (and vice versa),
  ``Dice = 1/2 [sum_p w_p D(p, g_p) + sum_g w_g D(g, p_g)]`` with weights ``|p| / sum|p|`` and
  ``|g| / sum|g|`` pooled over the dataset.
- **F1** and **accuracy** ``TP / (TP + FP + FN)`` at IoU 0.5, the Cellpose / StarDist convention
  (``cellpose.metrics.average_precision`` calls the latter "AP"): predictions with score >= the
  score threshold, a pair counts when IoU >= 0.5, and TP is the size of a *maximum* one-to-one
  matching (StarDist's and Cellpose's Hungarian cost maximises the number of matches first; for
  non-overlapping masks at IoU >= 0.5 the matching is unique anyway, so greedy and optimal agree).

IoUs come from a sparse contingency table (``np.bincount`` / ``np.unique`` on label pairs), never
from a loop over instance pairs: a LIVECell image has up to ~2000 cells and ~3000 predictions.

Everything a dataset metric needs from one image is kept in an :class:`ImageStats` (a few bytes per
prediction), so images can be scored on different ranks and merged (:class:`MetricAccumulator`).
Results do not depend on the order images were added: statistics are sorted by image id before
pooling (score ties across images are broken by image id, within an image by the given order).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

#: IoU thresholds 0.5, 0.55, ..., 0.95 (rounded so that 0.55 is the double nearest to 0.55).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: LIVECell's COCO area ranges (``sartorius-research/LIVECell`` ``code/coco_evaluation.py``), px^2.
LIVECELL_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e10),
    "small": (0.0, 18.0**2),
    "medium": (18.0**2, 31.0**2),
    "large": (31.0**2, 1e10),
}

#: LIVECell's COCO detection cap per image (stock COCO uses 100, which under-counts dense images).
LIVECELL_MAX_DETS = 2000

#: Metric keys of :func:`compute_metrics`, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "AP50",
    "AP75",
    "mAP",
    "coco_AP",
    "coco_AP50",
    "coco_AP75",
    "coco_APs",
    "coco_APm",
    "coco_APl",
    "dice",
    "F1",
    "accuracy",
    "precision",
    "recall",
    "n_images",
    "n_gt",
    "n_pred",
    "n_pred_above",
)

_COCO_AREA_KEYS = {"all": "coco_AP", "small": "coco_APs", "medium": "coco_APm", "large": "coco_APl"}


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


def _first_by(primary: np.ndarray, secondary_desc: np.ndarray, tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each value of ``primary``: the row with the largest ``secondary_desc`` (ties: smallest tiebreak)."""
    order = np.lexsort((tiebreak, -secondary_desc, primary))
    keys, first = np.unique(primary[order], return_index=True)
    return keys, order[first]


# ------------------------------------------------------------------------------------------------
# Per-image sufficient statistics
# ------------------------------------------------------------------------------------------------


def _bits(matrix: np.ndarray) -> np.ndarray:
    """(T, N) bool -> (N,) uint16 with bit t set where matrix[t] is True (T <= 16)."""
    weights = (1 << np.arange(matrix.shape[0], dtype=np.uint32)).astype(np.uint32)
    return (matrix.astype(np.uint32) * weights[:, None]).sum(axis=0).astype(np.uint16)


def _unbits(bits: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_bits`: (N,) uint16 -> (n, N) bool."""
    return ((bits[None, :].astype(np.uint32) >> np.arange(n, dtype=np.uint32)[:, None]) & 1).astype(bool)


@attrs.frozen(eq=False)
class CocoImage:
    """COCO ``evaluateImg`` output of one image for one area range (thresholds packed as bits).

    Detection d is the image's d-th best (its score is ``ImageStats.scores[d]``), d < max_dets.
    """

    matched: np.ndarray  # (D,) uint16 bit t: matched at threshold t
    ignored: np.ndarray  # (D,) uint16 bit t: ignored at threshold t
    n_gt_regular: int  # ground-truth instances inside the area range
    n_gt: int


@attrs.frozen(eq=False)
class ImageStats:
    """All that dataset-level metrics need from one image; small, picklable, mergeable."""

    image_id: str
    group: str
    group_index: int
    n_gt: int
    scores: np.ndarray  # (n_pred,) float32, decreasing (rank order)
    ap_tp: np.ndarray  # (n_pred,) uint16 bit t: true positive at IOU_THRESHOLDS[t] (CKS rule)
    coco: dict[str, CocoImage]
    dice_sums: tuple[float, float, float, float]  # sum_p |p| d_p, sum_p |p|, sum_g |g| d_g, sum_g |g|
    match_counts: tuple[int, int]  # (TP at IoU >= 0.5, predictions with score >= threshold)
    iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS

    @property
    def n_pred(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_pred_above(self) -> int:
        return int(self.match_counts[1])


def _dice_sums(ov: Overlap) -> tuple[float, float, float, float]:
    """Area-weighted Dice sums (eq. 15) of the predictions in ``ov`` (rank order)."""
    pa = ov.pred_areas.astype(np.float64)
    ga = ov.gt_areas.astype(np.float64)
    sp, sg = float(pa.sum()), float(ga.sum())
    if ov.pred.size == 0:
        return 0.0, sp, 0.0, sg
    inter = ov.intersection.astype(np.float64)
    # Each prediction -> gt of largest intersection (ties: lowest gt index, numpy argmax order).
    p_keys, rows = _first_by(ov.pred, inter, ov.gt)
    dice_p = 2.0 * inter[rows] / (pa[p_keys] + ga[ov.gt[rows]])
    # Each gt -> prediction of largest intersection (ties: the highest-ranked prediction).
    g_keys, rows_g = _first_by(ov.gt, inter, ov.pred)
    dice_g = 2.0 * inter[rows_g] / (ga[g_keys] + pa[ov.pred[rows_g]])
    return float((pa[p_keys] * dice_p).sum()), sp, float((ga[g_keys] * dice_g).sum()), sg


def stats_from_overlap(
    overlap: Overlap,
    scores: np.ndarray | Sequence[float] | None,
    *,
    image_id: str,
    group: str = "all",
    group_index: int = 0,
    score_threshold: float = 0.5,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    area_ranges: Mapping[str, tuple[float, float]] = LIVECELL_AREA_RANGES,
    max_dets: int = LIVECELL_MAX_DETS,
) -> ImageStats:
    """Score one image from its overlap table and per-prediction scores (None: all 1.0)."""
    n_pred, n_gt = overlap.n_pred, overlap.n_gt
    if scores is None:
        scores = np.ones(n_pred, np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size != n_pred:
        raise ValueError(f"{scores.size} scores given for {n_pred} predictions")
    if not np.all(np.isfinite(scores)):
        raise ValueError("prediction scores must be finite")
    thresholds = tuple(float(t) for t in iou_thresholds)
    n_t = len(thresholds)
    if n_t > 16:
        raise ValueError("at most 16 IoU thresholds are supported")
    rank = np.argsort(-scores, kind="stable")
    ov = overlap.take_predictions(rank)
    scores = scores[rank]
    iou = ov.iou()

    # CKS / paper AP (eq. 9): greedy, IoU > t strictly, all predictions.
    tp = np.zeros((n_t, n_pred), bool)
    for ti, t in enumerate(thresholds):
        sel = iou > t
        m = greedy_match(ov.pred[sel], ov.gt[sel], iou[sel], n_pred, ties="first")
        tp[ti] = m >= 0

    # COCO evaluateImg: top max_dets predictions, IoU >= t, per area range.
    d = min(n_pred, max_dets)
    top = ov.pred < d
    coco: dict[str, CocoImage] = {}
    for name, (lo, hi) in area_ranges.items():
        gt_ignore = (ov.gt_areas < lo) | (ov.gt_areas > hi)
        dt_out = (ov.pred_areas[:d] < lo) | (ov.pred_areas[:d] > hi)
        matched = np.zeros((n_t, d), bool)
        ignored = np.zeros((n_t, d), bool)
        for ti, t in enumerate(thresholds):
            sel = top & (iou >= min(t, 1 - 1e-10))
            m = greedy_match(ov.pred[sel], ov.gt[sel], iou[sel], d, ties="last", gt_ignore=gt_ignore)
            hit = m >= 0
            matched[ti] = hit
            ignored[ti] = dt_out
            ignored[ti, hit] = gt_ignore[m[hit]]
        coco[name] = CocoImage(
            matched=_bits(matched),
            ignored=_bits(ignored),
            n_gt_regular=int(np.count_nonzero(~gt_ignore)),
            n_gt=n_gt,
        )

    # Dice (eq. 15) and F1 / accuracy at IoU >= 0.5 on predictions with score >= threshold.
    n_above = int(np.count_nonzero(scores >= score_threshold))  # scores are sorted: a prefix
    above = ov.take_predictions(np.arange(n_above))
    dice = _dice_sums(above)
    a_iou = above.iou()
    sel = a_iou >= 0.5
    n_tp = max_matching_count(above.pred[sel], above.gt[sel], n_above, n_gt)

    return ImageStats(
        image_id=str(image_id),
        group=str(group),
        group_index=int(group_index),
        n_gt=n_gt,
        scores=scores.astype(np.float32),
        ap_tp=_bits(tp),
        coco=coco,
        dice_sums=dice,
        match_counts=(n_tp, n_above),
        iou_thresholds=thresholds,
    )


def _label_scores(scores: Any, pred_ids: np.ndarray) -> np.ndarray | None:
    """Scores of the labels ``pred_ids`` from an array (``scores[k - 1]`` for label k) or a mapping."""
    if scores is None:
        return None
    if isinstance(scores, Mapping):
        missing = [int(k) for k in pred_ids if int(k) not in scores]
        if missing:
            raise ValueError(f"no score for predicted labels {missing[:5]}")
        return np.array([float(scores[int(k)]) for k in pred_ids], np.float64)
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if pred_ids.size and int(pred_ids[-1]) > arr.size:
        raise ValueError(f"scores has {arr.size} entries but the prediction holds label {int(pred_ids[-1])}")
    return arr[pred_ids - 1]


def image_stats(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    scores: np.ndarray | Sequence[float] | Mapping[int, float] | None = None,
    *,
    image_id: str,
    group: str = "all",
    group_index: int = 0,
    **kwargs: Any,
) -> ImageStats:
    """Score one predicted label image against a ground-truth label image.

    ``scores`` gives each predicted label's score: an array with ``scores[k - 1]`` for label ``k``
    (the order of :meth:`Instances.to_label_image`), or a mapping ``{label: score}``; None scores
    every instance 1.0 (AP then ranks by label). Labels absent from the image are not predictions.
    Keyword arguments go to :func:`stats_from_overlap`.
    """
    overlap, _, pred_ids = overlap_from_labels(gt_labels, pred_labels)
    return stats_from_overlap(
        overlap, _label_scores(scores, pred_ids), image_id=image_id, group=group, group_index=group_index, **kwargs
    )


# ------------------------------------------------------------------------------------------------
# Dataset-level metrics
# ------------------------------------------------------------------------------------------------


def unsmoothed_ap(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """Paper eq. 9: ``sum_k T_k P_k / C`` over predictions ranked by score (stable for ties)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return _ranked_ap(np.asarray(tp, bool)[order], n_gt)


def _ranked_ap(hits: np.ndarray, n_gt: int) -> float:
    """Eq. 9 for true-positive flags already in rank order."""
    if n_gt == 0:
        return math.nan
    if hits.size == 0:
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision[hits].sum() / n_gt)


def coco_precision(stats: Sequence[ImageStats], area_ranges: Sequence[str]) -> dict[str, np.ndarray]:
    """COCO precision tables (T, R) per area range, accumulated by ``pycocotools.COCOeval.accumulate``.

    The per-image results are those of ``evaluateImg`` (computed in :func:`stats_from_overlap`);
    an area range without any ground truth in range gives a table of -1 (COCO's "absent").
    """
    from pycocotools.cocoeval import COCOeval

    thresholds = stats[0].iou_thresholds if stats else IOU_THRESHOLDS
    n_t = len(thresholds)
    ev = COCOeval(iouType="segm")
    p = ev.params
    p.imgIds = list(range(len(stats)))
    p.catIds = [1]
    p.useCats = 1
    p.iouThrs = np.asarray(thresholds, np.float64)
    p.areaRngLbl = list(area_ranges)
    # accumulate() only uses the ranges as distinct keys: the areas were applied per image already.
    p.areaRng = [[float(i), float(i)] for i in range(len(area_ranges))]
    max_dets = max((len(s.coco[a].matched) for s in stats for a in area_ranges), default=1)
    p.maxDets = [max(max_dets, 1)]
    eval_imgs: list[dict[str, Any] | None] = []
    for area in area_ranges:
        for s in stats:
            c = s.coco[area]
            n_dt = len(c.matched)
            if c.n_gt == 0 and n_dt == 0:
                eval_imgs.append(None)
                continue
            gt_ignore = np.zeros(c.n_gt, bool)
            gt_ignore[c.n_gt_regular :] = True
            eval_imgs.append(
                {
                    "dtScores": s.scores[:n_dt].astype(np.float64).tolist(),
                    "dtMatches": _unbits(c.matched, n_t).astype(np.float64),
                    "dtIgnore": _unbits(c.ignored, n_t),
                    "gtIgnore": gt_ignore.astype(np.int64),
                }
            )
    ev.evalImgs = eval_imgs
    ev._paramsEval = copy.deepcopy(p)  # what COCOeval.evaluate() leaves for accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    return {area: precision[:, :, 0, a, 0] for a, area in enumerate(area_ranges)}


def _coco_mean(table: np.ndarray) -> float:
    valid = table[table > -1]
    return float(valid.mean()) if valid.size else math.nan


def _safe_div(a: float, b: float) -> float:
    return a / b if b else math.nan


def compute_metrics(stats: Iterable[ImageStats], *, coco: bool = True) -> dict[str, float]:
    """Pooled metrics (keys :data:`METRIC_KEYS`) over the given images; NaN where undefined.

    Images are ordered by ``image_id`` first, so the result does not depend on the order in which
    they were scored or merged.
    """
    items = sorted(stats, key=lambda s: s.image_id)
    thresholds = items[0].iou_thresholds if items else IOU_THRESHOLDS
    n_t = len(thresholds)
    n_gt = sum(s.n_gt for s in items)
    out: dict[str, float] = dict.fromkeys(METRIC_KEYS, math.nan)
    out["n_images"] = float(len(items))
    out["n_gt"] = float(n_gt)
    out["n_pred"] = float(sum(s.n_pred for s in items))
    out["n_pred_above"] = float(sum(s.n_pred_above for s in items))

    scores = np.concatenate([s.scores for s in items]) if items else np.zeros(0, np.float32)
    tp_bits = np.concatenate([s.ap_tp for s in items]) if items else np.zeros(0, np.uint16)
    order = np.argsort(-scores.astype(np.float64), kind="stable")  # one ranking for every threshold
    tp = _unbits(tp_bits[order], n_t)
    aps = [_ranked_ap(tp[t], n_gt) for t in range(n_t)]
    if n_t:
        out["mAP"] = float(np.mean(aps))
    for t, ap in zip(thresholds, aps, strict=True):
        if abs(t - 0.5) < 1e-9:
            out["AP50"] = ap
        elif abs(t - 0.75) < 1e-9:
            out["AP75"] = ap

    if coco and items:
        areas = [a for a in _COCO_AREA_KEYS if all(a in s.coco for s in items)]
        tables = coco_precision(items, areas)
        for area, table in tables.items():
            out[_COCO_AREA_KEYS[area]] = _coco_mean(table)
        if "all" in tables:
            for t, key in ((0.5, "coco_AP50"), (0.75, "coco_AP75")):
                idx = [i for i, v in enumerate(thresholds) if abs(v - t) < 1e-9]
                if idx:
                    out[key] = _coco_mean(tables["all"][idx[0]])

    sp_w = sum(s.dice_sums[0] for s in items)
    sp = sum(s.dice_sums[1] for s in items)
    sg_w = sum(s.dice_sums[2] for s in items)
    sg = sum(s.dice_sums[3] for s in items)
    if sp or sg:
        out["dice"] = 0.5 * ((sp_w / sp if sp else 0.0) + (sg_w / sg if sg else 0.0))

    n_tp = sum(s.match_counts[0] for s in items)
    n_above = sum(s.match_counts[1] for s in items)
    fp, fn = n_above - n_tp, n_gt - n_tp
    out["precision"] = _safe_div(n_tp, n_above)
    out["recall"] = _safe_div(n_tp, n_gt)
    out["F1"] = _safe_div(2 * n_tp, 2 * n_tp + fp + fn)
    out["accuracy"] = _safe_div(n_tp, n_tp + fp + fn)
    return out


# ------------------------------------------------------------------------------------------------
# Accumulation (DDP-aware)
# ------------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Collects :class:`ImageStats` image by image; merge across ranks, then compute.

    >>> acc = MetricAccumulator()
    >>> acc.add(gt, pred, scores, image_id="img1", group="A172")       # doctest: +SKIP
    >>> acc = acc.gather()     # under torch.distributed: every rank gets all images   # doctest: +SKIP
    >>> acc.compute(), acc.compute_groups()                            # doctest: +SKIP

    Adding the same image id twice (e.g. overlapping DDP shards) is an error, because it would
    silently weight that image double.
    """

    def __init__(
        self,
        *,
        score_threshold: float = 0.5,
        iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
        area_ranges: Mapping[str, tuple[float, float]] = LIVECELL_AREA_RANGES,
        max_dets: int = LIVECELL_MAX_DETS,
    ) -> None:
        self.score_threshold = float(score_threshold)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.area_ranges = dict(area_ranges)
        self.max_dets = int(max_dets)
        self._stats: dict[str, ImageStats] = {}

    def __len__(self) -> int:
        return len(self._stats)

    @property
    def stats(self) -> list[ImageStats]:
        """Per-image statistics, ordered by image id."""
        return [self._stats[k] for k in sorted(self._stats)]

    def _options(self) -> dict[str, Any]:
        return {
            "score_threshold": self.score_threshold,
            "iou_thresholds": self.iou_thresholds,
            "area_ranges": self.area_ranges,
            "max_dets": self.max_dets,
        }

    def add_stats(self, stats: ImageStats) -> ImageStats:
        if stats.image_id in self._stats:
            raise ValueError(f"image {stats.image_id!r} was already scored; image ids must be unique")
        self._stats[stats.image_id] = stats
        return stats

    def add(
        self,
        gt_labels: np.ndarray,
        pred_labels: np.ndarray,
        scores: np.ndarray | Sequence[float] | Mapping[int, float] | None = None,
        *,
        image_id: str,
        group: str = "all",
        group_index: int = 0,
    ) -> ImageStats:
        """Score a predicted label image (see :func:`image_stats`)."""
        return self.add_stats(
            image_stats(
                gt_labels, pred_labels, scores, image_id=image_id, group=group, group_index=group_index,
                **self._options(),
            )
        )

    def add_overlap(
        self, overlap: Overlap, scores: Any, *, image_id: str, group: str = "all", group_index: int = 0
    ) -> ImageStats:
        """Score a precomputed overlap table."""
        return self.add_stats(
            stats_from_overlap(
                overlap, scores, image_id=image_id, group=group, group_index=group_index, **self._options()
            )
        )

    def add_instances(
        self,
        gt_labels: np.ndarray,
        instances: Any,
        *,
        image_id: str,
        group: str = "all",
        group_index: int = 0,
        mask_threshold: float = 0.5,
    ) -> ImageStats:
        """Score :class:`~weakseg.nn.instances.Instances` with overlapping masks (the CKS reference way)."""
        overlap, scores = overlap_from_instances(gt_labels, instances, mask_threshold)
        return self.add_overlap(overlap, scores, image_id=image_id, group=group, group_index=group_index)

    def merge(self, other: MetricAccumulator | Iterable[ImageStats]) -> MetricAccumulator:
        """Add every image of ``other`` (another accumulator or ImageStats); returns self."""
        items = other.stats if isinstance(other, MetricAccumulator) else list(other)
        for s in items:
            self.add_stats(s)
        return self

    def gather(self) -> MetricAccumulator:
        """All ranks' images on every rank (``torch.distributed.all_gather_object``); self when not distributed."""
        try:
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is a dependency
            return self
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.stats)
        merged = MetricAccumulator(**self._options())
        for part in parts:
            merged.merge(part)
        return merged

    def groups(self) -> list[str]:
        """Group names present, ordered by group index then name."""
        seen = {(s.group_index, s.group) for s in self._stats.values()}
        return [g for _, g in sorted(seen)]

    def compute(self, group: str | None = None, *, coco: bool = True) -> dict[str, float]:
        """Pooled metrics over all images, or over one group's images."""
        items = [s for s in self.stats if group is None or s.group == group]
        return compute_metrics(items, coco=coco)

    def compute_groups(self, *, coco: bool = True) -> dict[str, dict[str, float]]:
        """Metrics per group (cell line), in group order."""
        return {g: self.compute(g, coco=coco) for g in self.groups()}
