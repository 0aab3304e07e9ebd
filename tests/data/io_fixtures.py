"""Small real files for the data-import tests: label images, TIFF/PNG images, folder layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def blob_labels(shape: tuple[int, int] = (64, 80), n: int = 5, seed: int = 0, radius: int = 5) -> np.ndarray:
    """Disjoint discs with ids 1..n (centres kept apart so none touches the border)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    placed: list[tuple[float, float]] = []
    while len(placed) < n:
        cy = rng.uniform(radius + 1, shape[0] - radius - 1)
        cx = rng.uniform(radius + 1, shape[1] - radius - 1)
        if all((cy - py) ** 2 + (cx - px) ** 2 > (2 * radius + 2) ** 2 for py, px in placed):
            placed.append((cy, cx))
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = len(placed)
    return labels


def image_for(labels: np.ndarray, dtype: type = np.uint16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = 1000 if np.dtype(dtype).itemsize > 1 else 180
    img = (labels > 0) * fg + rng.integers(0, 50, size=labels.shape)
    return img.astype(dtype)


def write_tif(path: Path, array: np.ndarray, **kw: object) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **kw)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def usiigaci_like(root: Path, n_sets: int = 3, shape: tuple[int, int] = (64, 80)) -> dict[str, np.ndarray]:
    """``set*/raw.tif`` + ``set*/instances_ids.png`` (uint8); set1's id 2 gets a stray fragment."""
    out = {}
    for k in range(1, n_sets + 1):
        labels = blob_labels(shape, n=3 + k, seed=k).astype(np.uint8)
        if k == 1:
            labels[1:3, 1:3] = 2  # a stray 4-pixel fragment of cell 2
        write_tif(root / f"set{k}" / "raw.tif", image_for(labels, seed=k))
        write_png(root / f"set{k}" / "instances_ids.png", labels)
        out[f"set{k}"] = labels
    return out


def kromp_like(root: Path, names: tuple[str, ...] = ("normal_0", "normal_1", "tumour_0"),
               shape: tuple[int, int] = (48, 56)) -> dict[str, np.ndarray]:
    """``images/NAME.tif`` (uint8) + ``labels/NAME.tif`` (uint16) + a ``;``-separated description CSV."""
    out = {}
    rows = ["Image_Name;Diagnosis;Magnification"]
    for k, name in enumerate(names):
        labels = blob_labels(shape, n=2 + k, seed=10 + k).astype(np.uint16)
        write_tif(root / "images" / f"{name}.tif", image_for(labels, np.uint8, seed=k))
        write_tif(root / "labels" / f"{name}.tif", labels)
        rows.append(f"{name};{name.split('_')[0]};63x")
        out[name] = labels
    (root / "image_description.csv").write_text("\n".join(rows) + "\n")
    return out
