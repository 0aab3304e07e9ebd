"""The result of an evaluation: overall and per-group metrics, the table, JSON and CSV forms,
MLflow metric names, and the mask-threshold sweep (see weakseg.eval.evaluate)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import attrs
import numpy as np

from weakseg.eval.metrics import METRIC_KEYS, MetricAccumulator

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
    #: Per image id: ``{"scale", "diameter", "sizing"}``, the factor it was predicted at (when sized by
    #: a checkpoint's sizer, as ``weakseg predict`` sizes it).
    images: dict[str, dict[str, Any]] = attrs.field(factory=dict)
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
            **({"images": dict(self.images)} if self.images else {}),
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

    def sizes_table(self) -> str:
        """Plain-text table of the factor and cell diameter each image was predicted at."""
        lines = [f"{'image':<24} {'scale':>8} {'diameter':>9}  sizing"]
        for image_id, s in self.images.items():
            d = "-" if s.get("diameter") is None else f"{s['diameter']:.1f}"
            lines.append(f"{image_id:<24} {s['scale']:>8.3f} {d:>9}  {s.get('sizing', '')}")
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
