"""Annotated regions: rules, store round trip, napari shapes CSV and label-image import, training crops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from weakseg.data.dataset import build_train_dataset, make_train_loader
from weakseg.data.partial import region_for
from weakseg.data.regions import RegionSpec, read_region_file, shapes_csv_mask
from weakseg.data.store import open_store
from weakseg.errors import DataError
from weakseg.recipe import DataConfig, LabelSourceSpec

from .io_fixtures import write_png
from .test_augment import disc_labels
from .test_dataset import cell_image, write_store


@pytest.fixture
def store(tmp_path):
    la = disc_labels((120, 160), 60, seed=1)
    lb = disc_labels((100, 100), 30, seed=2)
    images = [
        {"id": "a", "image": cell_image(la), "labels": la},
        {"id": "b", "image": cell_image(lb), "labels": lb},
    ]
    return write_store(tmp_path / "store.zarr", images), {"a": la, "b": lb}


def test_rules_draw_the_central_and_left_parts():
    central = RegionSpec(type="central", fraction=0.25)
    assert central.bbox((100, 200)) == (25, 75, 50, 150)
    mask = central.render((100, 200))
    assert mask.sum() == 50 * 100 and mask[25, 50] == 1 and mask[24, 50] == 0
    assert np.array_equal(central.render((100, 200), rows=(20, 30)), mask[20:30])
    left = RegionSpec(type="left_half")
    assert left.bbox((10, 20)) == (0, 10, 0, 10)
    inside = left.contains(np.array([[5.5, 9.5], [5.5, 10.5]]), (10, 20))
    assert inside.tolist() == [True, False]


def test_store_round_trip_keeps_regions(store):
    path, _ = store
    s = open_store(path)
    assert s.regions("a") == [] and s.region("a") is None
    mask = np.zeros((120, 160), np.uint8)
    mask[10:50, 20:90] = 1
    s.write_region("a", mask, {"source": "test.csv"})
    s.write_region("b", RegionSpec(type="left_half"), {"rule": "left"}, name="left_half-0.5")
    again = open_store(path)
    assert again.regions("a") == ["annotated"] and again.regions("b") == ["left_half-0.5"]
    assert np.array_equal(np.asarray(again.region("a")[...]), mask)
    assert again.region_attrs("a")["provenance"] == {"source": "test.csv"}
    assert again.region_attrs("a")["bbox"] == [10, 50, 20, 90]
    assert np.asarray(again.region("b", "left_half-0.5")[...])[:, :50].all()
    with pytest.raises(DataError, match="100x100"):
        again.write_region("b", mask, {})
    with pytest.raises(DataError, match="empty"):
        again.write_region("b", np.zeros((100, 100)), {})


def test_napari_shapes_csv_fills_rectangles_polygons_and_ellipses(tmp_path):
    csv = tmp_path / "shapes.csv"
    csv.write_text(
        "index,shape-type,vertex-index,axis-0,axis-1\n"
        "0,rectangle,0,2,3\n0,rectangle,1,2,8\n0,rectangle,2,6,8\n0,rectangle,3,6,3\n"
        "1,polygon,0,20,20\n1,polygon,1,20,30\n1,polygon,2,30,20\n"
        "2,ellipse,0,40,40\n2,ellipse,1,40,50\n2,ellipse,2,44,50\n2,ellipse,3,44,40\n"
    )
    mask = shapes_csv_mask(csv, (64, 64))
    # napari puts pixel centres at integer coordinates: rows 2..6, columns 3..8 are inside the rectangle
    assert mask[2:7, 3:9].all() and mask[1, 3] == 0 and mask[2, 9] == 0 and mask[:10].sum() == 5 * 6
    assert mask[21, 21] == 1 and mask[29, 29] == 0  # the triangle's far corner is outside
    assert mask[42, 45] == 1 and mask[40, 40] == 0 and mask[42, 39] == 0  # ellipse centre in, box corner out
    assert read_region_file(csv, (64, 64)).sum() == mask.sum()
    bad = tmp_path / "path.csv"
    bad.write_text("index,shape-type,vertex-index,axis-0,axis-1\n0,path,0,1,1\n0,path,1,5,5\n")
    with pytest.raises(DataError, match="encloses no area"):
        shapes_csv_mask(bad, (64, 64))
    points = tmp_path / "points.csv"
    points.write_text("index,axis-0,axis-1\n0,1,1\n")
    with pytest.raises(DataError, match="not a napari shapes CSV"):
        shapes_csv_mask(points, (64, 64))


def test_label_image_region_and_size_check(tmp_path):
    labels = np.zeros((30, 40), np.uint8)
    labels[5:10, 5:20] = 7
    png = write_png(tmp_path / "region.png", labels)
    assert np.array_equal(read_region_file(png, (30, 40)), (labels > 0).astype(np.uint8))
    with pytest.raises(DataError, match="same size"):
        read_region_file(png, (31, 40))


def test_region_source_keeps_inner_points_and_stores_its_region(store):
    path, labels = store
    spec = LabelSourceSpec.of("region", base="centroids", region={"type": "left_half"})
    cfg = DataConfig(store=str(path), crop_size=48, num_workers=0, label_source=spec)
    dataset = build_train_dataset(cfg, seed=0)
    s = open_store(path)
    assert s.regions("a") == ["left_half-0.5"]
    assert dataset.entries[0].region == "left_half-0.5" and dataset.entries[0].region_box == (0, 120, 0, 80)
    pts = dataset.image_points(0)
    assert len(pts) and (pts[:, 1] < 80).all()
    full = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0), seed=0)
    assert len(full.image_points(0)) > len(pts)
    assert full.entries[0].region is None  # the rule's region is not the user's annotated region
    assert region_for(s, s.info("a"), "centroids") is None


def test_use_regions_false_keeps_the_points_and_drops_the_region(store):
    path, _ = store
    spec = LabelSourceSpec.of("region", base="centroids", region={"type": "left_half"})
    on = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0, label_source=spec), seed=0)
    cfg = DataConfig(store=str(path), crop_size=48, num_workers=0, label_source=spec, use_regions=False)
    off = build_train_dataset(cfg, seed=0)
    assert on.entries[0].region == "left_half-0.5"
    assert [e.region for e in off.entries] == [None, None]
    assert [e.region_box for e in off.entries] == [None, None]
    np.testing.assert_array_equal(off.image_points(0), on.image_points(0))  # the same partial point set
    assert all(off[(0, k)].annotated is None for k in range(3))  # unclicked pixels count as background


def test_mask_images_keeps_the_masks_of_a_seeded_few(store):
    path, _ = store
    cfg = DataConfig(store=str(path), crop_size=48, num_workers=0, mask_images=1)
    first = build_train_dataset(cfg, seed=3)
    assert sum(e.has_labels for e in first.entries) == 1
    again = build_train_dataset(cfg, seed=3)
    assert [e.has_labels for e in again.entries] == [e.has_labels for e in first.entries]
    unmasked = next(k for k, e in enumerate(first.entries) if not e.has_labels)
    crop = next(k for k in range(len(first)) if first.locate(k)[0] == unmasked)
    assert first[(0, crop)].mask is None and len(first.image_points(unmasked)) > 0
    every = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0), seed=3)
    assert all(e.has_labels for e in every.entries)
    none = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0, mask_images=0), seed=3)
    assert not any(e.has_labels for e in none.entries)


def test_mask_share_repeats_the_crops_of_the_masked_images(store):
    path, _ = store
    plain = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0, mask_images=1), seed=3)
    cfg = DataConfig(store=str(path), crop_size=48, num_workers=0, mask_images=1, mask_share=0.8)
    shared = build_train_dataset(cfg, seed=3)
    masked = sum(e.n_crops for e in shared.entries if e.has_labels)
    assert masked / len(shared) == pytest.approx(0.8, abs=0.05)
    assert masked > sum(e.n_crops for e in plain.entries if e.has_labels)
    unmasked = [e.n_crops for e in shared.entries if not e.has_labels]
    assert unmasked == [e.n_crops for e in plain.entries if not e.has_labels]  # the others unchanged
    crop = next(k for k in range(len(shared)) if shared.entries[shared.locate(k)[0]].has_labels)
    assert shared[(0, crop)].mask is not None
    full = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0), seed=3)
    all_masked = build_train_dataset(DataConfig(store=str(path), crop_size=48, num_workers=0, mask_share=0.8), seed=3)
    assert len(all_masked) == len(full)  # every image has masks: nothing to repeat


def write_left_regions(path, fraction):
    """Mark the left ``fraction`` of both fixture images (a, b) annotated."""
    s = open_store(path)
    for image_id, shape in (("a", (120, 160)), ("b", (100, 100))):
        mask = np.zeros(shape, np.uint8)
        mask[:, : round(shape[1] * fraction)] = 1
        s.write_region(image_id, mask, {"test": True})


def test_crops_overlap_the_region_and_carry_the_annotated_mask(store):
    path, _ = store
    write_left_regions(path, 1 / 4)
    cfg = DataConfig(store=str(path), crop_size=32, num_workers=0)
    dataset = build_train_dataset(cfg, seed=0)
    assert [e.region for e in dataset.entries] == ["annotated", "annotated"]
    for k in range(len(dataset)):
        sample = dataset[(0, k)]
        assert sample.annotated is not None and sample.annotated.shape == (32, 32)
        assert sample.annotated.any()  # every crop overlaps the region
    loader = make_train_loader(cfg, batch_size=3, seed=0)
    batch = next(loader)
    assert batch.annotated.shape == (3, 32, 32) and str(batch.annotated.dtype) == "torch.float32"
    assert set(np.unique(batch.annotated.numpy())) <= {0.0, 1.0}
    loader.close()


def test_region_margin_shrinks_the_annotated_mask_by_its_pixels(store):
    path, _ = store
    write_left_regions(path, 1 / 2)
    exact = build_train_dataset(DataConfig(store=str(path), crop_size=32, num_workers=0, region_margin=0), seed=0)
    shrunk = build_train_dataset(DataConfig(store=str(path), crop_size=32, num_workers=0, region_margin=4), seed=0)
    edges = 0
    for k in range(len(exact)):
        a, b = exact[(0, k)].annotated.astype(bool), shrunk[(0, k)].annotated.astype(bool)
        assert not (b & ~a).any()  # never grows
        if a.all():
            assert b.all()  # nothing to shrink from
            continue
        edges += 1
        np.testing.assert_array_equal(b, ndimage.distance_transform_edt(a) > 4)
        assert (a & ~b).any()
    assert edges > 0
    # the default: half of the target cell size
    sized = DataConfig(store=str(path), crop_size=32, num_workers=0, target_cell_size=10.0)
    assert build_train_dataset(sized, seed=0).region_margin == 5.0
    assert exact.region_margin == 0.0


def test_without_regions_batches_carry_no_mask_and_crops_are_unchanged(store):
    path, _ = store
    cfg = DataConfig(store=str(path), crop_size=32, num_workers=0)
    before = [build_train_dataset(cfg, seed=0)[(0, k)] for k in range(4)]
    assert all(s.annotated is None for s in before)
    loader = make_train_loader(cfg, batch_size=2, seed=0)
    assert next(loader).annotated is None
    loader.close()


def test_worker_processes_send_the_annotated_mask(store):
    path, _ = store
    s = open_store(path)
    s.write_region("a", RegionSpec(type="left_half"), {"rule": "left"})
    cfg0 = DataConfig(store=str(path), crop_size=32, num_workers=0)
    cfg1 = DataConfig(store=str(path), crop_size=32, num_workers=1)
    with make_train_loader(cfg0, batch_size=2, seed=0) as a, make_train_loader(cfg1, batch_size=2, seed=0) as b:
        for _ in range(3):
            x, y = next(a), next(b)
            assert (x.annotated is None) == (y.annotated is None)
            if x.annotated is not None:
                assert np.array_equal(x.annotated.numpy(), y.annotated.numpy())


def test_cli_stores_a_shapes_csv_region_and_show_outlines_it(store, tmp_path, capsys):
    from PIL import Image

    from weakseg.cli import main

    path, _ = store
    csv = tmp_path / "shapes.csv"
    csv.write_text("index,shape-type,vertex-index,axis-0,axis-1\n"
                   "0,rectangle,0,10,10\n0,rectangle,1,10,60\n0,rectangle,2,50,60\n0,rectangle,3,50,10\n")
    assert main(["data", "region", str(path), "a", str(csv)]) == 0
    assert "stored region 'annotated'" in capsys.readouterr().out
    assert open_store(path).region_attrs("a")["bbox"] == [10, 51, 10, 61]
    png = tmp_path / "a.png"
    assert main(["data", "show", str(path), "a", "-o", str(png), "--no-labels"]) == 0
    rgb = np.asarray(Image.open(png))
    cyan = (rgb[..., 0] == 0) & (rgb[..., 1] == 255) & (rgb[..., 2] == 255)
    assert cyan[10, 10:61].all() and not cyan[30, 30] and not cyan[80, 100]
    bad = tmp_path / "bad.csv"
    bad.write_text("y,x\n1,2\n")
    assert main(["data", "region", str(path), "a", str(bad)]) == 2
    assert "not a napari shapes CSV" in capsys.readouterr().err
