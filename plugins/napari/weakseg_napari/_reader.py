"""napari reader: weakseg stores and the outputs of ``weakseg predict`` as layers.

* A store folder (``*.zarr`` whose root ``zarr.json`` carries weakseg's metadata): every image as an
  image layer, its ``labels/cells`` as a labels layer and each stored point set as a points layer.
  Arrays stay lazy (dask over zarr); only the first image's layers are visible, since images of a
  store overlap in one viewer.
* A label TIFF written by ``weakseg predict`` (listed in the ``summary.json`` beside it): a labels
  layer, plus the per-cell CSV of the same name as points when it is there.
* A per-cell CSV of ``weakseg predict --format csv``: a points layer at the cells' centroids with
  every column (score, area, ...) as a feature.

Points are shown in napari's convention (pixel centres at integers); weakseg stores them at i + 0.5.
Any other path is left to other readers (``None``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

#: Columns that mark a CSV as the per-cell table of ``weakseg predict``.
PREDICTION_COLUMNS = ("label", "centroid_y", "centroid_x")


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """The reader for ``path`` when it is a weakseg store or prediction output, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if is_weakseg_store(p):
        return read_store
    if p.suffix.lower() in (".tif", ".tiff") and is_prediction_tiff(p):
        return read_prediction_tiff
    if p.suffix.lower() == ".csv" and is_prediction_csv(p):
        return read_prediction_csv
    return None


def is_weakseg_store(path: Path) -> bool:
    """A folder whose root zarr.json holds weakseg's store attributes."""
    from weakseg.data.store import FORMAT

    meta_file = path / "zarr.json"
    if not (path.is_dir() and meta_file.is_file()):
        return False
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("attributes", {}).get("weakseg") or {}).get("format") == FORMAT


def is_prediction_tiff(path: Path) -> bool:
    """A TIFF that ``weakseg predict`` listed as an output in the summary.json beside it."""
    summary = path.parent / "summary.json"
    if not summary.is_file():
        return False
    try:
        predicted = json.loads(summary.read_text()).get("predicted", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(Path(out).name == path.name for rec in predicted for out in rec.get("outputs", []))


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [h.strip().lower() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError):
        return []


def is_prediction_csv(path: Path) -> bool:
    """A CSV with the label and centroid columns of ``weakseg predict --format csv``."""
    header = _header(path)
    return all(c in header for c in PREDICTION_COLUMNS)


def _lazy(array: Any) -> Any:
    import dask.array as da

    return da.from_array(array, chunks=getattr(array, "chunks", "auto"))


def _store_layers(store: Any, info: Any, visible: bool) -> list[LayerData]:
    from weakseg.inference.correct import to_napari

    image_id = info.image_id
    image = _lazy(store.image(image_id))
    meta: dict[str, Any] = {"name": image_id, "visible": visible, "metadata": {"weakseg": {"image_id": image_id}}}
    if image.shape[0] == 1:
        layers: list[LayerData] = [(image[0], meta, "image")]
    else:
        meta["channel_axis"] = 0
        meta["name"] = [f"{image_id} c{k}" for k in range(image.shape[0])]
        layers = [(image, meta, "image")]
    labels = store.labels(image_id)
    if labels is not None:
        layers.append((_lazy(labels), {"name": f"{image_id} cells", "visible": visible}, "labels"))
    for source in store.point_sources(image_id):
        points = store.points(image_id, source)
        if points is None:
            continue
        layer_meta = {
            "name": f"{image_id} {source}",
            "visible": visible,
            "size": 6,
            "metadata": {"weakseg": {"image": image_id, "source": source}},
        }
        layers.append((to_napari(points), layer_meta, "points"))
    return layers


def read_store(path: str | list[str]) -> list[LayerData]:
    """Layers of every image of a weakseg store."""
    from weakseg.data.store import open_store

    store = open_store(Path(path[0] if isinstance(path, list) else path))
    layers: list[LayerData] = []
    for k, info in enumerate(store.images):
        layers += _store_layers(store, info, visible=k == 0)
    return layers


def _read_table(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    names = list(rows[0]) if rows else []
    table: dict[str, np.ndarray] = {}
    for name in names:
        values = [r[name] for r in rows]
        try:
            table[name.strip()] = np.asarray([float(v) for v in values])
        except ValueError:
            table[name.strip()] = np.asarray(values)
    return table


def _prediction_points(path: Path, stem: str) -> LayerData:
    table = _read_table(path)
    n = len(table.get("label", ()))
    yx = np.stack([table["centroid_y"], table["centroid_x"]], 1) if n else np.zeros((0, 2))
    features = {k: v for k, v in table.items() if k not in ("centroid_y", "centroid_x")}
    meta = {
        "name": f"{stem} points",
        "features": features,
        "size": 6,
        "metadata": {"weakseg": {"image": stem, "source": "prediction"}},
    }
    return (yx - 0.5, meta, "points")


def read_prediction_csv(path: str | list[str]) -> list[LayerData]:
    """The per-cell CSV of ``weakseg predict`` as a points layer with its columns as features."""
    p = Path(path[0] if isinstance(path, list) else path)
    return [_prediction_points(p, p.stem)]


def read_prediction_tiff(path: str | list[str]) -> list[LayerData]:
    """A predicted label TIFF as a labels layer (and its per-cell CSV as points, when present)."""
    import tifffile

    p = Path(path[0] if isinstance(path, list) else path)
    labels = np.asarray(tifffile.imread(p)).astype(np.int32, copy=False)
    layers: list[LayerData] = [(labels, {"name": f"{p.stem} cells"}, "labels")]
    table = p.with_suffix(".csv")
    if table.is_file() and is_prediction_csv(table):
        layers.append(_prediction_points(table, p.stem))
    return layers
