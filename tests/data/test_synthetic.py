"""Seeded synthetic data and ensure_store (the demo path of recipes with data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from weakseg.data.masks import instance_centroids
from weakseg.data.prepare import ensure_store
from weakseg.data.store import open_store
from weakseg.data.synthetic import synthetic_image
from weakseg.errors import DataError
from weakseg.recipe import DataConfig, SyntheticData


def test_deterministic_and_seed_dependent():
    cfg = SyntheticData(size=96, seed=4)
    a, b = synthetic_image(cfg, 1), synthetic_image(cfg, 1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = synthetic_image(SyntheticData(size=96, seed=5), 1)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("modality", ["phase", "fluorescence"])
def test_realistic_structure(modality):
    cfg = SyntheticData(size=128, modality=modality, cell_diameter=20, seed=1)
    s = synthetic_image(cfg, 0)
    assert s.image.shape == (1, 128, 128) and s.image.dtype == np.uint16
    assert s.labels.dtype == np.int32 and s.nuclei.shape == (128, 128)
    ids = np.unique(s.labels)[1:]
    assert ids.tolist() == list(range(1, len(ids) + 1)) and len(ids) >= 15
    # cells touch: some horizontally adjacent pixels belong to two different cells
    left, right = s.labels[:, :-1], s.labels[:, 1:]
    assert ((left > 0) & (right > 0) & (left != right)).sum() > 20
    # one connected body per cell, sizes around the requested diameter, irregular (not all discs)
    _ids, _pts, area = instance_centroids(s.labels)
    diam = 2 * np.sqrt(area / np.pi)
    assert 12 < np.median(diam) < 28
    # every nucleus centre lies inside its own cell, and the stain is bright there
    cy, cx = np.floor(s.centers).astype(int).T
    assert (s.labels[cy, cx] == ids).mean() > 0.95
    assert s.nuclei[cy, cx].mean() > 3 * np.median(s.nuclei)
    # image contrast: cells differ from background
    fg = s.labels > 0
    assert abs(float(s.image[0][fg].mean()) - float(s.image[0][~fg].mean())) > 0.05 * float(s.image.mean())


def test_ensure_store_generates_reuses_and_refreshes(tmp_path):
    path = tmp_path / "demo.zarr"
    cfg = DataConfig(store=str(path), synthetic=SyntheticData(n_images=4, size=64, val_fraction=0.25))
    assert ensure_store(cfg) == path
    store = open_store(path)
    assert len(store.images) == 4 and store.groups == ["fluorescence", "phase"]
    assert [i.split for i in store.images].count("val") >= 1
    info = store.images[0]
    assert info.has_labels and info.has_nuclei and info.n_points["centroids"] == info.n_instances
    stamp = (path / "zarr.json").stat().st_mtime_ns
    ensure_store(cfg)
    assert (path / "zarr.json").stat().st_mtime_ns == stamp  # reused as is
    ensure_store(DataConfig(store=str(path), synthetic=SyntheticData(n_images=3, size=64)))
    assert len(open_store(path).images) == 3  # settings changed: regenerated


def test_ensure_store_without_synthetic(tmp_path):
    with pytest.raises(DataError, match="store not found"):
        ensure_store(DataConfig(store=str(tmp_path / "none.zarr")))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic weakseg store"):
        ensure_store(DataConfig(store=str(tmp_path / "foreign"), synthetic=SyntheticData(n_images=1, size=32)))
    assert (tmp_path / "foreign" / "x.txt").exists()
