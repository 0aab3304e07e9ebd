"""Label sources through points_for: centroids, nuclei (blob detection), csv, jitter; caching in the store."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from weakseg.components import ImageRecord
from weakseg.data.labels import CentroidsSource, JitterSource, NucleiSource, points_for
from weakseg.data.masks import instance_centroids
from weakseg.data.store import StoreWriter
from weakseg.errors import DataError
from weakseg.recipe import LabelSourceSpec, SyntheticData

from .io_fixtures import blob_labels, image_for


def match_f1(found: np.ndarray, truth: np.ndarray, radius: float) -> float:
    if not len(found) or not len(truth):
        return 0.0
    d = cdist(found, truth)
    r, c = linear_sum_assignment(d)
    tp = int((d[r, c] <= radius).sum())
    return 2 * tp / (len(found) + len(truth))


@pytest.fixture
def store(tmp_path):
    from weakseg.data.synthetic import synthetic_image

    syn = synthetic_image(SyntheticData(size=160, cell_diameter=22, seed=3), 1)
    labels = blob_labels((64, 80), n=5, seed=4)
    w = StoreWriter(tmp_path / "s.zarr")
    w.add(ImageRecord(image_id="masks", source="m", load_image=lambda: image_for(labels), load_labels=lambda: labels))
    w.add(
        ImageRecord(image_id="syn", source="s", load_image=lambda: syn.image, load_labels=lambda: syn.labels,
                    load_nuclei=lambda: syn.nuclei)
    )
    w.add(ImageRecord(image_id="given", source="g", load_image=lambda: image_for(labels),
                      load_points=lambda: np.array([[5.0, 6.0], [20.5, 30.5]])))
    st = w.close()
    st.syn = syn
    st.mask_labels = labels
    return st


def test_centroids_from_masks_and_cache(store, tmp_path):
    info = store.info("masks")
    pts = points_for(store, info, "centroids")
    np.testing.assert_allclose(pts, instance_centroids(store.mask_labels)[1])
    # a non-default config is cached under its own key, next to the import-time set
    spec = LabelSourceSpec.of("centroids", connectivity=1)
    points_for(store, info, spec)
    key = CentroidsSource(connectivity=1).cache_key(0)
    assert key != "centroids" and key in store.point_sources("masks")
    assert store.points_provenance("masks", key)["label_source"] == "centroids"


def test_centroids_without_masks_names_image(store):
    with pytest.raises(DataError, match="given.*needs instance masks"):
        points_for(store, store.info("given"), "centroids")


def test_nuclei_blob_detection_finds_synthetic_nuclei(store):
    info = store.info("syn")
    pts = points_for(store, info, {"type": "nuclei", "diameter": 9.0})
    f1 = match_f1(pts, store.syn.centers, radius=5.0)
    assert f1 > 0.85, f1
    # cached and reproducible
    key = NucleiSource(diameter=9.0).cache_key(0)
    np.testing.assert_array_equal(store.points("syn", key), pts)
    dog = points_for(store, info, {"type": "nuclei", "diameter": 9.0, "method": "dog"})
    assert match_f1(dog, store.syn.centers, radius=5.0) > 0.8


def test_nuclei_tiled_matches_whole():
    from weakseg.data.labels import detect_nuclei
    from weakseg.data.synthetic import synthetic_image

    syn = synthetic_image(SyntheticData(size=200, cell_diameter=22, seed=5), 0)
    whole = detect_nuclei(syn.nuclei, diameter=9.0)
    tiled = detect_nuclei(syn.nuclei, diameter=9.0, tile=64)
    assert abs(len(whole) - len(tiled)) <= 2
    assert match_f1(tiled, whole, radius=1.0) > 0.97


def test_nuclei_from_a_channel(store):
    # the synthetic nuclear image as channel 0 of a 1-channel image works without a stored stain
    pts = points_for(store, store.info("masks"), {"type": "nuclei", "diameter": 10.0, "channel": 0})
    assert len(pts) >= 3


def test_csv_given_points_and_table(store, tmp_path):
    np.testing.assert_allclose(points_for(store, store.info("given"), "csv"), [[5.0, 6.0], [20.5, 30.5]])
    with pytest.raises(DataError, match="no given points"):
        points_for(store, store.info("masks"), "csv")
    table = tmp_path / "pts.csv"
    table.write_text("image_id,y,x\nmasks,1.5,2.5\nmasks,3,4\nsyn,7,8\n")
    pts = points_for(store, store.info("masks"), {"type": "csv", "path": str(table)})
    np.testing.assert_allclose(pts, [[1.5, 2.5], [3, 4]])
    assert len(points_for(store, store.info("given"), {"type": "csv", "path": str(table)})) == 0


def test_jitter_is_seeded_drops_and_moves(store):
    info = store.info("syn")
    base = points_for(store, info, "centroids")
    spec = LabelSourceSpec.of("jitter", drop=0.2, move=1.0, distance=4.0)
    a = points_for(store, info, spec, seed=1)
    b = points_for(store, info, spec, seed=1)
    c = points_for(store, info, spec, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == len(base) - int(round(0.2 * len(base)))
    # every jittered point lies within `distance` of a distinct base point
    d = cdist(a, base)
    r, col = linear_sum_assignment(d)
    assert d[r, col].max() <= 4.0 + 1e-4
    assert np.median(d[r, col]) > 0.5  # they did move
    # a fixed seed in the config overrides the run's seed
    fixed = LabelSourceSpec.of("jitter", seed=7)
    np.testing.assert_array_equal(points_for(store, info, fixed, seed=1), points_for(store, info, fixed, seed=2))
    assert not [s for s in store.point_sources("syn") if s.startswith("jitter")]  # not cached


def test_jitter_config_validation():
    from weakseg.errors import RecipeError
    from weakseg.recipe import structure

    with pytest.raises(RecipeError, match="drop"):
        structure({"type": "jitter", "drop": 1.5}, LabelSourceSpec, root="recipe.data.label_source")
    assert JitterSource().base.type == "centroids"


def test_jitter_in_cell_diameters_moves_by_a_fraction_of_the_measured_diameter(store):
    from weakseg.data.cellsize import diameter_from_labels
    from weakseg.data.labels import compute_import_points

    info = store.info("syn")
    diameter = diameter_from_labels(np.asarray(store.labels("syn")[...]))
    rel = LabelSourceSpec.of("jitter", drop=0.0, move=1.0, distance=0.15, distance_unit="diameter")
    px = LabelSourceSpec.of("jitter", drop=0.0, move=1.0, distance=0.15 * diameter)
    np.testing.assert_allclose(points_for(store, info, rel, seed=3), points_for(store, info, px, seed=3), atol=1e-5)
    base = points_for(store, info, "centroids")
    moved = np.linalg.norm(points_for(store, info, rel, seed=3) - base, axis=1)
    assert moved.max() <= 0.15 * diameter + 1e-4 and moved.max() > 1.0
    # at import, from the record's own masks
    labels = np.asarray(store.labels("syn")[...])
    image = np.asarray(store.image("syn")[...])
    got = compute_import_points([rel], image_id="syn", image=image, labels=labels, points=None, nuclei=None, seed=3)
    np.testing.assert_allclose(next(iter(got.values()))[0], points_for(store, info, rel, seed=3), atol=1e-5)
    # no masks, no metadata, fewer than two points: no diameter to measure
    with pytest.raises(DataError, match="cell diameter"):
        JitterSource(distance_unit="diameter").in_pixels(None)


def test_region_source_keeps_the_points_inside_its_rule(store):
    info = store.info("syn")
    base = points_for(store, info, "centroids")
    spec = LabelSourceSpec.of("region", base="centroids", region={"type": "central", "fraction": 0.25})
    kept = points_for(store, info, spec)
    # the central quarter of the 160 x 160 image is rows and columns 40..120
    inside = (base[:, 0] >= 40) & (base[:, 0] < 120) & (base[:, 1] >= 40) & (base[:, 1] < 120)
    np.testing.assert_array_equal(kept, base[inside])
    assert 0 < len(kept) < len(base)
