"""The zarr store: round trip, OME-Zarr metadata, completeness marker, resume, lazy large images."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from weakseg.components import ImageRecord
from weakseg.data.masks import instance_centroids
from weakseg.data.store import StoreWriter, open_store
from weakseg.errors import DataError

from .io_fixtures import blob_labels, image_for, write_tif


def _record(image_id, labels, *, split="train", group="all", channels=1, points=None, nuclei=None):
    base = labels if labels is not None else blob_labels()
    img = np.stack([image_for(base, seed=c) for c in range(channels)])
    return ImageRecord(
        image_id=image_id,
        source=f"memory:{image_id}",
        load_image=lambda: img,
        load_labels=(lambda: labels) if labels is not None else None,
        load_points=(lambda: points) if points is not None else None,
        load_nuclei=(lambda: nuclei) if nuclei is not None else None,
        split=split,
        group=group,
        pixel_size=0.65,
    )


def test_round_trip(tmp_path):
    la = blob_labels((64, 80), n=4, seed=1)
    lb = blob_labels((600, 700), n=9, seed=2, radius=12)
    pts = np.array([[10.5, 20.25], [30.0, 40.0]], np.float32)
    nuc = image_for(la, seed=9)
    w = StoreWriter(tmp_path / "s.zarr")
    w.add(_record("a", la, group="HeLa", points=pts, nuclei=nuc))
    w.add(_record("b", lb, split="val", group="A172", channels=2))
    w.add(_record("c", None, group="HeLa", points=pts))
    store = w.close()

    assert [i.image_id for i in store.images] == ["a", "b", "c"]
    assert store.groups == ["A172", "HeLa"]  # sorted; group index = position
    a, b, c = store.images
    assert a.shape == (1, 64, 80) and b.shape == (2, 600, 700)
    assert a.dtype == "uint16" and a.has_labels and a.has_nuclei and not c.has_labels
    assert a.n_instances == 4 and b.n_instances == 9
    np.testing.assert_array_equal(store.labels("a")[...], la)
    assert store.labels("a").dtype == np.int32
    np.testing.assert_array_equal(store.image("b")[1, 100:200, 50:60], image_for(lb, seed=1)[100:200, 50:60])
    np.testing.assert_array_equal(store.nuclei("a")[...], nuc)
    np.testing.assert_allclose(store.points("a", "csv"), pts)
    np.testing.assert_allclose(store.points("b", "centroids"), instance_centroids(lb)[1])
    assert a.n_points == {"csv": 2, "centroids": 4} and c.point_sources == ("csv",)
    assert store.labels("c") is None and store.points("c", "centroids") is None
    assert [i.image_id for i in store.select(split="train", groups=("HeLa",))] == ["a", "c"]
    assert store.image("b").chunks == (2, 512, 512)

    summary = store.summary()
    assert summary["images"] == 3 and summary["instances"] == 13
    assert summary["splits"]["val"]["images"] == 1
    assert summary["splits"]["train"]["points"] == {"csv": 4, "centroids": 4}


def test_ome_zarr_metadata(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr")
    w.add(_record("a", blob_labels()))
    w.close()
    group = json.loads((tmp_path / "s.zarr/images/a/zarr.json").read_text())["attributes"]["ome"]
    assert group["version"] == "0.5"
    ms = group["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"] and ms["datasets"][0]["path"] == "0"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.65, 0.65]
    labels_group = json.loads((tmp_path / "s.zarr/images/a/labels/zarr.json").read_text())["attributes"]["ome"]
    assert labels_group["labels"] == ["cells"]
    cells = json.loads((tmp_path / "s.zarr/images/a/labels/cells/zarr.json").read_text())["attributes"]["ome"]
    assert "image-label" in cells and [a["name"] for a in cells["multiscales"][0]["axes"]] == ["y", "x"]
    arr = json.loads((tmp_path / "s.zarr/images/a/0/zarr.json").read_text())
    assert arr["zarr_format"] == 3 and arr["dimension_names"] == ["c", "y", "x"]


def test_incomplete_store_is_refused_and_existing_store_protected(tmp_path):
    path = tmp_path / "s.zarr"
    w = StoreWriter(path, fingerprint={"x": 1})
    w.add(_record("a", blob_labels()))
    with pytest.raises(DataError, match="incomplete"):
        open_store(path)
    with pytest.raises(DataError, match="other data"):
        StoreWriter(path, fingerprint={"x": 2})
    w2 = StoreWriter(path, fingerprint={"x": 1})  # same import: resumes
    assert w2.done("a") is not None and w2.resumed == ["a"]
    w2.close()
    assert len(open_store(path).images) == 1
    with pytest.raises(DataError, match="already exists"):
        StoreWriter(path)
    w3 = StoreWriter(path, overwrite=True)
    w3.add(_record("z", blob_labels()))
    assert [i.image_id for i in w3.close().images] == ["z"]


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not a weakseg store"):
        StoreWriter(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_missing_store_message_names_path(tmp_path):
    with pytest.raises(DataError, match="store not found.*weakseg data import"):
        open_store(tmp_path / "nope.zarr")


def test_store_pickles_and_caches_points(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr")
    w.add(_record("a", blob_labels()))
    store = pickle.loads(pickle.dumps(w.close()))
    assert store.image("a").shape == (1, 64, 80)
    store.write_points("a", "mine", np.array([[1, 2]], np.float32), {"why": "test"})
    store.write_points("a", "mine", np.array([[3, 4], [5, 6]], np.float32), {"why": "again"})
    np.testing.assert_allclose(store.points("a", "mine"), [[3, 4], [5, 6]])
    assert store.points_provenance("a", "mine") == {"why": "again"}
    assert store.point_sources("a") == ["centroids", "mine"]
    assert not [p for p in (tmp_path / "s.zarr/images/a/points").iterdir() if p.name.startswith(".tmp")]
    # the direct chunk reader agrees with zarr, also for empty and all-zero sets
    import zarr

    store.write_points("a", "zero", np.zeros((1, 2), np.float32), {})
    store.write_points("a", "empty", np.zeros((0, 2), np.float32), {})
    for name in ("mine", "zero", "empty", "centroids"):
        via_zarr = zarr.open_array(str(tmp_path / "s.zarr/images/a/points" / name), mode="r")[...]
        np.testing.assert_array_equal(store.points("a", name), via_zarr)
    assert store.points("a", "empty").shape == (0, 2) and store.points("a", "nothing") is None


def test_large_tiff_is_copied_lazily(tmp_path, monkeypatch):
    """A TIFF above the lazy threshold is read region by region and gives the same store."""
    import weakseg.data.readers as readers
    from weakseg.data.readers import LazyImage, read_image, read_plane

    labels = blob_labels((700, 900), n=30, seed=5, radius=10).astype(np.uint16)
    img = np.stack([image_for(labels, seed=1), image_for(labels, seed=2)])
    write_tif(tmp_path / "big.tif", img, tile=(256, 256), compression="zlib", photometric="minisblack")
    write_tif(tmp_path / "big_labels.tif", labels, tile=(256, 256))
    monkeypatch.setattr(readers, "LAZY_PIXELS", 100_000)
    assert isinstance(read_image(tmp_path / "big.tif"), LazyImage)
    rec = ImageRecord(
        image_id="big",
        source=str(tmp_path / "big.tif"),
        load_image=lambda: read_image(tmp_path / "big.tif"),
        load_labels=lambda: read_plane(tmp_path / "big_labels.tif"),
    )
    w = StoreWriter(tmp_path / "s.zarr", chunk=256)
    w.add(rec, lazy_pixels=100_000)
    store = w.close()
    np.testing.assert_array_equal(store.image("big")[...], img)
    np.testing.assert_array_equal(store.labels("big")[...], labels)
    np.testing.assert_allclose(store.points("big", "centroids"), instance_centroids(labels)[1], atol=1e-4)
    assert store.images[0].n_instances == 30
