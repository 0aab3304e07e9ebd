"""Evaluation runs: a strategy's principal model on a store split, scored per group and overall.

:func:`evaluate_strategy` is what the engine calls during training and what ``weakseg evaluate``
calls on a checkpoint. Images come from :func:`weakseg.data.dataset.iter_eval_images` (raw,
original resolution, with the per-group scale); the principal model runs through
:class:`weakseg.inference.predictor.Predictor` (standardisation, rescaling, tiling); metrics are
those of :mod:`weakseg.eval.metrics`; the result (tables, JSON, CSV) is a
:class:`weakseg.eval.result.EvalResult`.

Two ways to turn detections into masks (``masks=``):

- ``"instances"`` (default, as the CKS reference evaluates): every detection keeps its own mask
  crop, binarised at 0.5; masks may overlap; AP ranks all detections, Dice and F1 use those with
  score >= ``score_threshold``.
- ``"labels"``: the label image a user gets from ``weakseg predict`` (detections with score >=
  ``score_threshold`` pasted, the higher score winning each pixel), scored with the label scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from weakseg.errors import DataError, WeaksegError
from weakseg.eval.metrics import MetricAccumulator
from weakseg.eval.result import TABLE_KEYS, EvalResult, EvalSample

MASK_MODES = ("instances", "labels")

__all__ = ["MASK_MODES", "TABLE_KEYS", "EvalResult", "EvalSample", "evaluate_strategy"]


def evaluate_strategy(
    strategy: Any,
    data_cfg: Any,
    split: str = "val",
    max_images: int | None = None,
    score_threshold: float = 0.5,
    device: Any = "cpu",
    predictor_kwargs: Mapping[str, Any] | None = None,
    *,
    masks: str = "instances",
    mask_threshold: float = 0.5,
    sweep_mask_thresholds: Sequence[float] = (),
    distributed: bool = False,
    keep_sample: bool = True,
    progress: Callable[[int, str], None] | None = None,
    input_scale: Any = None,
    sizer: Any = None,
    measured_sizes: bool = False,
) -> EvalResult:
    """Score ``strategy.principal()`` on ``split`` of the store of ``data_cfg`` (a DataConfig).

    Args:
        strategy: a StrategyModule (DDP-wrapped is fine); its training mode is restored afterwards.
        max_images: only the first N images of the split (store order).
        score_threshold: detections kept for Dice, F1/accuracy and label images (AP ranks all).
        device: where the model runs (the Predictor moves the principal there).
        predictor_kwargs: extra :class:`~weakseg.inference.predictor.Predictor` arguments (tile_size,
            batch_size, precision, ...); a ``scale`` here overrides the per-group scale.
        masks: ``"instances"`` (overlapping crops, the CKS reference way) or ``"labels"`` (pasted).
        mask_threshold: probability at which instance masks are binarised.
        sweep_mask_thresholds: also score these mask thresholds from the same predictions
            (``result.sweep``; ``masks="instances"`` only): the calibration of ``eval.mask_threshold``
            on a labelled validation split.
        distributed: shard images over the ranks of an initialised ``torch.distributed`` group and
            gather the statistics; **every rank must call** (the engine instead evaluates on rank 0
            alone, which is the default ``False``).
        keep_sample: keep the first image and its prediction in ``result.sample`` (for the panel).
        progress: called as ``progress(n_done, image_id)`` after each image.
        input_scale: the run's :class:`~weakseg.data.scales.InputScale` (measured on the store when None).
        sizer: an :class:`~weakseg.inference.scale.ImageSizer` (as ``weakseg predict`` uses): images are
            resized as it says, not by the store's measured factor, and named in ``result.images``.
        measured_sizes: resize each image by its own cell diameter measured on the store (its masks), as
            ``--diameter`` would with each image's true value; named in ``result.images``.
    """
    import torch

    from weakseg.data.dataset import iter_eval_images
    from weakseg.devices import unwrap

    sweep = _check_mask_options(masks, mask_threshold, sweep_mask_thresholds)
    rank, world = _rank_and_world(distributed)
    module = unwrap(strategy)
    was_training = bool(getattr(module, "training", False))
    run = _EvalRun(
        module.principal(), device, predictor_kwargs, score_threshold=score_threshold, masks=masks,
        mask_threshold=mask_threshold, sweep=sweep, keep_sample=keep_sample and rank == 0, progress=progress,
    )
    run.sizer = sizer  # the same sizing as prediction, when given
    run.cell_size = getattr(data_cfg, "target_cell_size", None) if measured_sizes else None
    try:
        with torch.no_grad():
            images = iter_eval_images(data_cfg, split, max_images, scale=input_scale, measured=measured_sizes)
            run.score_all(ev for i, ev in enumerate(images) if i % world == rank)
    finally:
        if hasattr(module, "train"):
            module.train(was_training)
    if distributed and world > 1:
        run.gather(world)
    if len(run.acc) == 0:
        raise DataError(
            f"store {getattr(data_cfg, 'store', '?')}: split {split!r} has no images with ground-truth labels "
            f"({run.n_unlabeled} without); evaluation needs instance masks (import a labelled split)"
        )
    return EvalResult.from_accumulator(
        run.acc,
        split=split,
        store=str(getattr(data_cfg, "store", "")),
        score_threshold=float(score_threshold),
        masks=masks,
        n_unlabeled=run.n_unlabeled,
        sample=run.sample,
        mask_threshold=float(mask_threshold),
        sweep={t: extra.compute() for t, extra in run.sweep_accs.items()}, images=run.sizes,
    )


def _check_mask_options(masks: str, mask_threshold: float, sweep_mask_thresholds: Sequence[float]) -> list[float]:
    """Validate the mask options; the swept thresholds other than ``mask_threshold``, sorted."""
    if masks not in MASK_MODES:
        raise WeaksegError(f"masks must be one of {', '.join(MASK_MODES)}, got {masks!r}")
    sweep = sorted({float(t) for t in sweep_mask_thresholds} - {float(mask_threshold)})
    for t in [mask_threshold, *sweep]:
        if not 0.0 < t < 1.0:
            raise WeaksegError(f"mask thresholds are probabilities strictly between 0 and 1, got {t}")
    if sweep and masks != "instances":
        raise WeaksegError("a mask-threshold sweep scores each detection's own mask: use masks='instances'")
    return sweep


def _rank_and_world(distributed: bool) -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group when ``distributed``, else (0, 1)."""
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _EvalRun:
    """The state of one evaluation: predictors per scale, the accumulators, the kept sample.

    Images are predicted in groups of ``batch_size`` (small ones in one forward pass), grouped by
    their scale, and scored into :class:`~weakseg.eval.metrics.MetricAccumulator` objects: one for
    ``mask_threshold`` and one per swept threshold.
    """

    def __init__(
        self,
        model: Any,
        device: Any,
        predictor_kwargs: Mapping[str, Any] | None,
        *,
        score_threshold: float,
        masks: str,
        mask_threshold: float,
        sweep: Sequence[float],
        keep_sample: bool,
        progress: Callable[[int, str], None] | None,
    ) -> None:
        self.model = model
        self.device = device
        self.kwargs = dict(predictor_kwargs or {})
        self.fixed_scale = self.kwargs.pop("scale", None)
        self.kwargs.setdefault("score_threshold", score_threshold)
        self.kwargs.setdefault("mask_threshold", mask_threshold)
        self.batch_size = int(self.kwargs.get("batch_size", 4))
        self.masks = masks
        self.mask_threshold = mask_threshold
        self.keep_sample = keep_sample
        self.progress = progress
        self.predictors: dict[float, Any] = {}
        self.acc = MetricAccumulator(score_threshold=score_threshold)
        self.sweep_accs = {t: MetricAccumulator(score_threshold=score_threshold) for t in sweep}
        self.sample: EvalSample | None = None
        self.n_unlabeled = 0
        self.n_seen = 0
        self.sizer: Any = None
        self.cell_size: float | None = None
        self.sizes: dict[str, dict[str, Any]] = {}

    def predictor_for(self, scale: float) -> Any:
        from weakseg.inference.predictor import Predictor

        if scale not in self.predictors:
            self.predictors[scale] = Predictor(self.model, scale=scale, device=self.device, **self.kwargs)
        return self.predictors[scale]

    def score_all(self, images: Any) -> None:
        """Predict and score every labelled image of ``images``; count the unlabelled ones."""
        pending: list[Any] = []
        for ev in images:
            if ev.labels is None:
                self.n_unlabeled += 1
                continue
            pending.append(ev)
            if len(pending) >= self.batch_size:
                self.flush(pending)
                pending = []
        self.flush(pending)

    def flush(self, pending: list[Any]) -> None:
        """Predict a group of images (by scale) and score each."""
        by_scale: dict[float, list[Any]] = {}
        for ev in pending:
            by_scale.setdefault(self.scale_of(ev), []).append(ev)
        for scale, items in by_scale.items():
            pred = self.predictor_for(scale)
            if self.masks == "instances":
                outputs = pred.predict_batch([ev.image for ev in items])
            else:
                outputs = [pred.predict_labels(ev.image) for ev in items]
            for ev, out in zip(items, outputs, strict=True):
                self.score(ev, out, scale)

    def scale_of(self, ev: Any) -> float:
        """The factor of one image: the ``scale`` option, else the sizer's, else the image's own."""
        if self.fixed_scale is not None or self.sizer is None:
            if self.cell_size and self.fixed_scale is None:
                diameter = self.cell_size / ev.scale
                self.sizes[ev.image_id] = {"scale": ev.scale, "diameter": diameter, "sizing": "measured"}
            return float(self.fixed_scale or ev.scale)
        sizing = self.sizer.size(ev.image, ev.group)
        self.sizes[ev.image_id] = sizing.to_dict()
        return float(sizing.scale)

    def score(self, ev: Any, out: Any, scale: float) -> None:
        """Score one image's prediction (Instances, or a (labels, table) pair) into the accumulators."""
        where = {"image_id": ev.image_id, "group": ev.group, "group_index": ev.group_index}
        if self.masks == "instances":
            out = out.to("cpu")
            self.acc.add_instances(ev.labels, out, mask_threshold=self.mask_threshold, **where)
            for t, extra in self.sweep_accs.items():
                extra.add_instances(ev.labels, out, mask_threshold=t, **where)
        else:
            labels, table = out
            out = np.asarray(labels)
            self.acc.add(ev.labels, out, np.asarray(table.scores, np.float64), **where)
        if self.keep_sample and self.sample is None:
            self.sample = EvalSample(ev.image_id, ev.image, ev.labels, out, ev.group, ev.group_index, scale)
        self.n_seen += 1
        if self.progress is not None:
            self.progress(self.n_seen, ev.image_id)

    def gather(self, world: int) -> None:
        """Every rank's statistics and unlabelled counts on every rank (torch.distributed)."""
        import torch.distributed as dist

        self.acc = self.acc.gather()
        self.sweep_accs = {t: extra.gather() for t, extra in self.sweep_accs.items()}
        counts: list[Any] = [None] * world
        dist.all_gather_object(counts, self.n_unlabeled)
        self.n_unlabeled = int(sum(counts))
