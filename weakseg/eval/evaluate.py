"""Evaluation runs: a strategy's principal model on a store split, scored per group and overall.

:func:`evaluate_strategy` is what the engine calls during training and what ``weakseg evaluate``
calls on a checkpoint. Images come from :func:`weakseg.data.dataset.iter_eval_images` (raw,
original resolution, with the per-group scale); the principal model runs through
:class:`weakseg.inference.predictor.Predictor` (standardisation, rescaling, tiling); metrics are
those of :mod:`weakseg.eval.metrics`.

Two ways to turn detections into masks (``masks=``):

- ``"instances"`` (default, as the CKS reference evaluates): every detection keeps its own mask
  crop, binarised at 0.5; masks may overlap; AP ranks all detections, Dice and F1 use those with
  score >= ``score_threshold``.
- ``"labels"``: the label image a user gets from ``weakseg predict`` (detections with score >=
  ``score_threshold`` pasted, the higher score winning each pixel), scored with the label scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from weakseg.errors import DataError, WeaksegError
from weakseg.eval.metrics import METRIC_KEYS, MetricAccumulator

MASK_MODES = ("instances", "labels")

#: Columns of :meth:`EvalResult.table` (the JSON and CSV hold every key of METRIC_KEYS).
TABLE_KEYS = ("AP50", "AP75", "mAP", "coco_AP", "dice", "F1", "accuracy", "n_images", "n_gt", "n_pred")

_COUNT_KEYS = ("n_images", "n_gt", "n_pred", "n_pred_above")


@attrs.define
class EvalSample:
    """One evaluated image kept for the evaluation figure (not serialised)."""

    image_id: str
    image: np.ndarray  # (C, H, W) raw
    labels: np.ndarray | None  # (H, W) ground truth
    instances: Any  # Instances (CPU) or an int32 label image
    group: str
    group_index: int
    scale: float


def _clean(value: float, key: str) -> float | int | None:
    """JSON-friendly value: counts as int, NaN as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if key in _COUNT_KEYS:
        return int(value)
    return float(value)


@attrs.define
class EvalResult:
    """Metrics of one evaluation: ``overall`` and per-``groups`` dicts with the keys of METRIC_KEYS.

    Undefined values (e.g. AP of a group without ground truth) are NaN in the dicts and ``null``
    in JSON / empty in CSV.
    """

    split: str
    overall: dict[str, float]
    groups: dict[str, dict[str, float]]
    store: str = ""
    score_threshold: float = 0.5
    masks: str = "instances"
    n_unlabeled: int = 0
    mask_threshold: float = 0.5
    #: Overall metrics at other mask thresholds, from the same predictions (``sweep_mask_thresholds``).
    sweep: dict[float, dict[str, float]] = attrs.field(factory=dict)
    sample: EvalSample | None = attrs.field(default=None, repr=False, eq=False)

    @classmethod
    def from_accumulator(cls, acc: MetricAccumulator, **kwargs: Any) -> EvalResult:
        return cls(overall=acc.compute(), groups=acc.compute_groups(), **kwargs)

    def rows(self) -> list[dict[str, Any]]:
        """One row per group, the first being ``"all"``: ``{"group": name, key: value, ...}``."""
        out = [{"group": "all", **{k: _clean(self.overall.get(k, math.nan), k) for k in METRIC_KEYS}}]
        for name, metrics in self.groups.items():
            out.append({"group": name, **{k: _clean(metrics.get(k, math.nan), k) for k in METRIC_KEYS}})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: settings, ``overall`` and ``groups`` (see :meth:`to_json`)."""
        return {
            "format": "weakseg-eval/1",
            "split": self.split,
            "store": self.store,
            "score_threshold": self.score_threshold,
            "masks": self.masks,
            "mask_threshold": self.mask_threshold,
            "n_unlabeled": self.n_unlabeled,
            "overall": {k: _clean(self.overall.get(k, math.nan), k) for k in METRIC_KEYS},
            "groups": {
                name: {k: _clean(m.get(k, math.nan), k) for k in METRIC_KEYS} for name, m in self.groups.items()
            },
            "mask_threshold_sweep": [
                {"mask_threshold": t, **{k: _clean(m.get(k, math.nan), k) for k in METRIC_KEYS}}
                for t, m in sorted(self.sweep.items())
            ],
            "best_mask_threshold": self.best_mask_threshold(),
        }

    def by_mask_threshold(self) -> dict[float, dict[str, float]]:
        """Overall metrics of the evaluated mask threshold and of the sweep, by increasing threshold."""
        return dict(sorted({self.mask_threshold: self.overall, **self.sweep}.items()))

    def best_mask_threshold(self, key: str = "AP50") -> float:
        """The mask threshold of the sweep (and the evaluated one) with the highest ``key``; ties: the lower."""
        scored = [(t, m.get(key, math.nan)) for t, m in self.by_mask_threshold().items()]
        scored = [(t, v) for t, v in scored if v is not None and not math.isnan(v)]
        if not scored:
            return self.mask_threshold
        return max(scored, key=lambda tv: tv[1])[0]

    def sweep_table(self, keys: tuple[str, ...] = ("AP50", "AP75", "mAP", "dice", "F1")) -> str:
        """Plain-text table of the overall metrics per mask threshold, the best AP50 marked with ``*``."""
        best = self.best_mask_threshold()
        lines = ["mask threshold  " + "  ".join(f"{k:>7}" for k in keys)]
        for t, m in self.by_mask_threshold().items():
            cells = "  ".join(f"{_fmt(_clean(m.get(k, math.nan), k)):>7}" for k in keys)
            lines.append(f"{t:>13.2f}{'*' if t == best else ' '}  {cells}")
        return "\n".join(lines) + "\n"

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN written as null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_csv(self, path: Any = None) -> str:
        """CSV text with a header ``group,AP50,...`` and one row per group (``all`` first); also written
        to ``path`` when given."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["group", *METRIC_KEYS], lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        text = buf.getvalue()
        if path is not None:
            from pathlib import Path

            Path(path).write_text(text)
        return text

    def flat(self, prefix: str = "val") -> dict[str, float]:
        """``{"<prefix>/AP50": ..., "<prefix>/<group>/AP50": ...}`` for metric loggers (NaN dropped)."""
        out: dict[str, float] = {}
        for name, metrics in [(None, self.overall), *self.groups.items()]:
            for k in METRIC_KEYS:
                v = metrics.get(k, math.nan)
                if v is None or math.isnan(v):
                    continue
                out[f"{prefix}/{k}" if name is None else f"{prefix}/{_metric_safe(name)}/{k}"] = float(v)
        return out

    def table(self, keys: tuple[str, ...] = TABLE_KEYS, width: int = 140) -> str:
        """The metrics as a rich text table (one row per group, ``all`` last in bold)."""
        from rich.console import Console
        from rich.table import Table

        title = f"weakseg evaluation: split {self.split!r}"
        if self.store:
            title += f" of {self.store}"
        table = Table(title=title, title_justify="left")
        table.add_column("group")
        for k in keys:
            table.add_column(k, justify="right")
        rows = self.rows()
        for row in rows[1:] + rows[:1]:
            cells = [_fmt(row.get(k)) for k in keys]
            style = "bold" if row["group"] == "all" else None
            table.add_row(str(row["group"]), *cells, style=style)
        buf = io.StringIO()
        Console(file=buf, width=width, force_terminal=False, color_system=None).print(table)
        note = (
            f"AP/mAP: paper eq. 9 (unsmoothed, IoU > t); coco_AP: pycocotools, maxDets 2000; "
            f"dice (eq. 15), F1, accuracy: score >= {self.score_threshold:g}, IoU >= 0.5; masks: {self.masks} "
            f"(binarised at {self.mask_threshold:g})"
        )
        if self.n_unlabeled:
            note += f"; {self.n_unlabeled} image(s) without ground truth skipped"
        return buf.getvalue() + note + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def _metric_safe(name: str) -> str:
    """A group name usable inside an MLflow metric key (letters, digits, _ - . space /)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in str(name))


def _unwrap(strategy: Any) -> Any:
    from torch import nn

    if isinstance(strategy, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return strategy.module
    return strategy


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
    """
    import torch

    from weakseg.data.dataset import iter_eval_images
    from weakseg.inference.predictor import Predictor

    if masks not in MASK_MODES:
        raise WeaksegError(f"masks must be one of {', '.join(MASK_MODES)}, got {masks!r}")
    sweep = sorted({float(t) for t in sweep_mask_thresholds} - {float(mask_threshold)})
    for t in [mask_threshold, *sweep]:
        if not 0.0 < t < 1.0:
            raise WeaksegError(f"mask thresholds are probabilities strictly between 0 and 1, got {t}")
    if sweep and masks != "instances":
        raise WeaksegError("a mask-threshold sweep scores each detection's own mask: use masks='instances'")
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()

    module = _unwrap(strategy)
    was_training = bool(getattr(module, "training", False))
    model = module.principal()
    kwargs = dict(predictor_kwargs or {})
    fixed_scale = kwargs.pop("scale", None)
    kwargs.setdefault("score_threshold", score_threshold)
    kwargs.setdefault("mask_threshold", mask_threshold)
    predictors: dict[float, Any] = {}

    def predictor_for(scale: float) -> Any:
        if scale not in predictors:
            predictors[scale] = Predictor(model, scale=scale, device=device, **kwargs)
        return predictors[scale]

    acc = MetricAccumulator(score_threshold=score_threshold)
    sweep_accs = {t: MetricAccumulator(score_threshold=score_threshold) for t in sweep}
    sample: EvalSample | None = None
    n_unlabeled = 0
    n_seen = 0
    pending: list[Any] = []
    batch_size = int(kwargs.get("batch_size", 4))

    def flush() -> None:
        nonlocal sample, n_seen
        by_scale: dict[float, list[Any]] = {}
        for ev in pending:
            by_scale.setdefault(float(fixed_scale or ev.scale), []).append(ev)
        for scale, items in by_scale.items():
            pred = predictor_for(scale)
            if masks == "instances":
                outputs = pred.predict_batch([ev.image for ev in items])
            else:
                outputs = [pred.predict_labels(ev.image) for ev in items]
            for ev, out in zip(items, outputs, strict=True):
                if masks == "instances":
                    out = out.to("cpu")
                    acc.add_instances(
                        ev.labels, out, image_id=ev.image_id, group=ev.group, group_index=ev.group_index,
                        mask_threshold=mask_threshold,
                    )
                    for t, extra in sweep_accs.items():
                        extra.add_instances(
                            ev.labels, out, image_id=ev.image_id, group=ev.group, group_index=ev.group_index,
                            mask_threshold=t,
                        )
                else:
                    labels, table = out
                    labels = np.asarray(labels)
                    acc.add(
                        ev.labels, labels, np.asarray(table.scores, np.float64),
                        image_id=ev.image_id, group=ev.group, group_index=ev.group_index,
                    )
                    out = labels
                if keep_sample and sample is None and rank == 0:
                    sample = EvalSample(ev.image_id, ev.image, ev.labels, out, ev.group, ev.group_index, scale)
                n_seen += 1
                if progress is not None:
                    progress(n_seen, ev.image_id)
        pending.clear()

    try:
        with torch.no_grad():
            for i, ev in enumerate(iter_eval_images(data_cfg, split, max_images, scale=input_scale)):
                if i % world != rank:
                    continue
                if ev.labels is None:
                    n_unlabeled += 1
                    continue
                pending.append(ev)
                if len(pending) >= batch_size:
                    flush()
            flush()
    finally:
        if hasattr(module, "train"):
            module.train(was_training)

    if distributed and world > 1:
        import torch.distributed as dist

        acc = acc.gather()
        sweep_accs = {t: extra.gather() for t, extra in sweep_accs.items()}
        counts: list[Any] = [None] * world
        dist.all_gather_object(counts, n_unlabeled)
        n_unlabeled = int(sum(counts))
    if len(acc) == 0:
        raise DataError(
            f"store {getattr(data_cfg, 'store', '?')}: split {split!r} has no images with ground-truth labels "
            f"({n_unlabeled} without); evaluation needs instance masks (import a labelled split)"
        )
    return EvalResult.from_accumulator(
        acc,
        split=split,
        store=str(getattr(data_cfg, "store", "")),
        score_threshold=float(score_threshold),
        masks=masks,
        n_unlabeled=n_unlabeled,
        sample=sample,
        mask_threshold=float(mask_threshold),
        sweep={t: extra.compute() for t, extra in sweep_accs.items()},
    )
