"""The correction loop: predict, turn detections into points, let a person edit them, retrain.

A model trained from points finds most cells; the quickest way to a better one is to correct its
detections on a few more images (add a point on each missed cell, delete each false one) and train
again from the current model with those images added. The napari plugin (``weakseg_napari``) drives
these functions from its dock widget; without a GUI the same loop is a few lines of Python::

    from weakseg.inference import correct

    predictor = weakseg.load("runs/mine")                       # a run folder or a .ckpt
    found = correct.detect(predictor, image)                     # labels, centres (y, x), scores
    correct.write_points_csv("edit/img.csv", correct.to_napari(found.points), {"score": found.scores})
    # ... edit edit/img.csv (or open it in napari), keep img.tif beside it ...
    points = correct.read_points("edit/img.csv")                 # weakseg's (y, x), pixel centres at i + 0.5
    result = correct.train_from_points(
        "recipes/cks_kromp_cpu.yaml", [("img", image, points), ...], "work/", init_from="runs/mine"
    )                                                            # result.checkpoint, result.run_id

Coordinates: weakseg puts pixel centres at ``i + 0.5``, napari at integers; :func:`to_napari` and
:func:`from_napari` convert. The CSVs written here are napari's points format (``index,axis-0,axis-1``
plus property columns), which ``weakseg data import points`` reads (adding the 0.5 back).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from weakseg.errors import DataError

#: Offset between napari's pixel-centre convention (integers) and weakseg's (i + 0.5).
NAPARI_OFFSET = 0.5


@attrs.frozen
class Detections:
    """One image's prediction: the label image and one centre + score per label (row k is label k + 1)."""

    labels: np.ndarray  # (H, W) int32
    points: np.ndarray  # (N, 2) float32, (y, x), weakseg convention
    scores: np.ndarray  # (N,) float32


def to_napari(points: np.ndarray) -> np.ndarray:
    """weakseg (y, x) (pixel centres at i + 0.5) -> napari layer coordinates (centres at i)."""
    return np.asarray(points, np.float64).reshape(-1, 2) - NAPARI_OFFSET


def from_napari(points: np.ndarray) -> np.ndarray:
    """napari layer coordinates (the last two axes are y, x) -> weakseg (y, x) float32."""
    arr = np.asarray(points, np.float64)
    arr = arr.reshape(-1, arr.shape[-1] if arr.ndim > 1 else 2)[:, -2:]
    return (arr + NAPARI_OFFSET).astype(np.float32)


def detect(predictor: Any, image: Any, progress: Callable[[int, int], None] | None = None) -> Detections:
    """Predict ``image`` ((H, W) or (C, H, W)) with a :class:`~weakseg.inference.predictor.Predictor`.

    Each kept cell's centre is its detected location, so that the points a person corrects are
    the ones the model itself proposed (not mask centroids, which move with the mask threshold).
    """
    labels, table = predictor.predict_labels(image, progress=progress)
    labels = np.asarray(labels, dtype=np.int32)
    n = len(table.scores)
    present = np.zeros(n + 1, bool)
    present[np.unique(labels)] = True
    keep = present[1:]
    points = np.asarray(table.locations, np.float32).reshape(-1, 2)[keep]
    scores = np.asarray(table.scores, np.float32)[keep]
    if not keep.all():  # labels covered entirely by others: renumber so row k is label k + 1
        remap = np.zeros(n + 1, np.int32)
        remap[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = remap[labels]
    return Detections(labels=labels, points=points, scores=scores)


def write_points_csv(
    path: str | Path, points: np.ndarray, properties: Mapping[str, Sequence[Any]] | None = None
) -> Path:
    """Write napari-coordinate points (N, D) as napari's CSV (``index,axis-0,...``) plus property columns.

    ``weakseg data import points`` reads the file (the last two axes as y, x).
    """
    pts = np.asarray(points, np.float64)
    pts = pts.reshape(0, 2) if pts.size == 0 else pts.reshape(len(pts), -1)
    props = {k: list(v) for k, v in (properties or {}).items()}
    for name, values in props.items():
        if len(values) != len(pts):
            raise DataError(f"{path}: property {name!r} has {len(values)} values for {len(pts)} points")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", *[f"axis-{d}" for d in range(pts.shape[1])], *props])
        for k, row in enumerate(pts):
            extra = [_cell(props[name][k]) for name in props]
            writer.writerow([k, *[f"{v:.6g}" for v in row], *extra])
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return value.item() if isinstance(value, np.generic) else value


def read_points(path: str | Path) -> np.ndarray:
    """Points (N, 2) float32 in weakseg's convention from any CSV the points importer reads."""
    from weakseg.data.importers.points import read_points_csv

    return read_points_csv(path)


def as_channel_first(image: Any, name: str = "image") -> np.ndarray:
    """(H, W), (C, H, W) or napari's RGB(A) (H, W, 3|4) as a (C, H, W) array."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] not in (1, 3, 4):
        return np.moveaxis(arr, -1, 0)  # RGB(A) as napari holds it
    if arr.ndim == 3:
        return arr
    raise DataError(f"{name}: expected a 2-D image or (C, H, W), got shape {arr.shape}")


def write_training_folder(folder: str | Path, items: Sequence[tuple[str, Any, np.ndarray]]) -> Path:
    """Write ``(name, image, points in weakseg's convention)`` as ``name.tif`` + ``name.csv`` into ``folder``:
    the layout ``weakseg data import points`` reads."""
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not items:
        raise DataError(f"{folder}: no images with points to train from; add a points layer to an image")
    for name, image, points in items:
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        if len(pts) == 0:
            raise DataError(f"{name}: has no points; click once inside every cell before training")
        tifffile.imwrite(folder / f"{name}.tif", as_channel_first(image, name))
        write_points_csv(folder / f"{name}.csv", to_napari(pts))
    return folder


def import_points_store(folder: str | Path, store: str | Path, **options: Any) -> Path:
    """Import a folder written by :func:`write_training_folder` into a fresh weakseg store."""
    from weakseg.data.ingest import run_import

    run_import("points", folder, store, options={"images": "*.tif", **options}, overwrite=True, workers=1)
    return Path(store)


def train_from_points(
    recipe: str | Path | Any,
    items: Sequence[tuple[str, Any, np.ndarray]],
    work_dir: str | Path,
    **options: Any,
) -> Any:
    """Train ``recipe`` on ``items`` (name, image, points in weakseg's convention); the run's ``RunResult``.

    The images and points are written to ``work_dir/points`` (:func:`write_training_folder`), then
    :func:`train_from_folder` imports and trains them; ``options`` are its keyword arguments.
    """
    folder = write_training_folder(Path(work_dir) / "points", items)
    return train_from_folder(recipe, folder, work_dir, **options)


def train_from_folder(
    recipe: str | Path | Any,
    folder: str | Path,
    work_dir: str | Path,
    *,
    init_from: str | Path | None = None,
    name: str | None = None,
    steps: int | None = None,
    output: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = False,
) -> Any:
    """Import ``folder`` (images + points CSVs) into ``work_dir/store.zarr`` and train ``recipe`` on it.

    The recipe's store is replaced by the new one and its label source by ``csv`` (the imported
    points). With ``init_from`` (a run folder or checkpoint, e.g. the model whose detections were
    corrected) the run continues that model, collaborator included (``model.init_from`` with
    ``model.init_scope: all``). The run goes to
    ``<output>/<name>`` (``output`` defaults to ``work_dir/runs``; its ``mlflow.db`` tracks the run);
    ``callbacks`` are the trainer's per-step ``(trainer, step, losses)`` callbacks.
    """
    from weakseg.engine.run import run_recipe
    from weakseg.recipe import Recipe, apply_overrides, load_recipe, structure

    work = Path(work_dir)
    store = import_points_store(folder, work / "store.zarr")
    base = recipe.to_dict() if isinstance(recipe, Recipe) else load_recipe(recipe).to_dict()
    base["data"]["synthetic"] = None
    changes: dict[str, Any] = {
        "data.store": str(store),
        "data.label_source": {"type": "csv"},
        "eval.panel": False,
        **(overrides or {}),
    }
    if name is not None:
        changes["name"] = name
    if steps is not None:
        changes["train.steps"] = int(steps)
    if init_from is not None:
        changes["model.init_from"] = str(init_from)
        changes.setdefault("model.init_scope", "all")  # continue the whole model, collaborator included
    sets = [f"{k}={json.dumps(v)}" for k, v in changes.items()]
    resolved = structure(apply_overrides(base, sets), Recipe)
    out = Path(output) if output is not None else work / "runs"
    return run_recipe(resolved, output=out, fresh=True, callbacks=callbacks, progress=progress)
