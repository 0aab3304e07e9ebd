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

The pieces live in weakseg.eval.overlap (overlap and matching), weakseg.eval.per_image (per-image
statistics), weakseg.eval.aggregate (dataset-level metrics) and here (:class:`MetricAccumulator`);
every public name is importable from this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from weakseg.eval.aggregate import METRIC_KEYS, coco_precision, compute_metrics, unsmoothed_ap
from weakseg.eval.overlap import (
    Overlap,
    greedy_match,
    max_matching_count,
    overlap_from_instances,
    overlap_from_labels,
    overlap_from_pixels,
)
from weakseg.eval.per_image import (
    IOU_THRESHOLDS,
    LIVECELL_AREA_RANGES,
    LIVECELL_MAX_DETS,
    CocoImage,
    ImageStats,
    image_stats,
    stats_from_overlap,
)

__all__ = [
    "IOU_THRESHOLDS",
    "LIVECELL_AREA_RANGES",
    "LIVECELL_MAX_DETS",
    "METRIC_KEYS",
    "CocoImage",
    "ImageStats",
    "MetricAccumulator",
    "Overlap",
    "coco_precision",
    "compute_metrics",
    "greedy_match",
    "image_stats",
    "max_matching_count",
    "overlap_from_instances",
    "overlap_from_labels",
    "overlap_from_pixels",
    "stats_from_overlap",
    "unsmoothed_ap",
]


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
