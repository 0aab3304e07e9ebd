"""Per-image sufficient statistics: everything a dataset metric needs from one image.

An :class:`ImageStats` keeps a few bytes per prediction (its score, packed true-positive bits per IoU
threshold, COCO matches per area range, Dice sums and match counts), so images can be scored on
different ranks and pooled later (weakseg.eval.aggregate, weakseg.eval.metrics.MetricAccumulator).
The scoring rules are those described in weakseg.eval.metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from weakseg.eval.overlap import Overlap, first_by, greedy_match, max_matching_count, overlap_from_labels

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


# ------------------------------------------------------------------------------------------------
# Per-image sufficient statistics
# ------------------------------------------------------------------------------------------------


def pack_bits(matrix: np.ndarray) -> np.ndarray:
    """(T, N) bool -> (N,) uint16 with bit t set where matrix[t] is True (T <= 16)."""
    weights = (1 << np.arange(matrix.shape[0], dtype=np.uint32)).astype(np.uint32)
    return (matrix.astype(np.uint32) * weights[:, None]).sum(axis=0).astype(np.uint16)


def unpack_bits(bits: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (N,) uint16 -> (n, N) bool."""
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
    p_keys, rows = first_by(ov.pred, inter, ov.gt)
    dice_p = 2.0 * inter[rows] / (pa[p_keys] + ga[ov.gt[rows]])
    # Each gt -> prediction of largest intersection (ties: the highest-ranked prediction).
    g_keys, rows_g = first_by(ov.gt, inter, ov.pred)
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
            matched=pack_bits(matched),
            ignored=pack_bits(ignored),
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
        ap_tp=pack_bits(tp),
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
