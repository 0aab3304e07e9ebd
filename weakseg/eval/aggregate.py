"""Dataset-level metrics from per-image statistics: unsmoothed AP / mAP, COCO mask AP (accumulated by
``pycocotools.COCOeval.accumulate`` itself), instance Dice, F1, accuracy, precision and recall.

Statistics are sorted by image id before pooling, so the result does not depend on the order in
which images were scored or merged (score ties across images are broken by image id).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from weakseg.eval.per_image import IOU_THRESHOLDS, ImageStats, unpack_bits

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
                    "dtMatches": unpack_bits(c.matched, n_t).astype(np.float64),
                    "dtIgnore": unpack_bits(c.ignored, n_t),
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
    tp = unpack_bits(tp_bits[order], n_t)
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
