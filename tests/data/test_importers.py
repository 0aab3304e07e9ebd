"""Importers on small real files: folder layouts, splits and groups, points CSVs, nuclear stains, COCO."""

from __future__ import annotations

import json

import numpy as np
import pytest

from weakseg.data.ingest import build_importer, run_import
from weakseg.data.masks import instance_centroids
from weakseg.data.store import open_store
from weakseg.errors import DataError

from .io_fixtures import blob_labels, image_for, kromp_like, usiigaci_like, write_png, write_tif


def scan(name, source, **options):
    _spec, importer = build_importer(name, options)
    return list(importer.scan(source))


# ---- folder ---------------------------------------------------------------------------------


def test_folder_usiigaci_layout(tmp_path):
    truth = usiigaci_like(tmp_path / "src")
    result = run_import("folder", tmp_path / "src", tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    assert [i.image_id for i in store.images] == ["set1", "set2", "set3"]
    for info in store.images:
        labels = truth[info.image_id]
        assert info.n_instances == len(np.unique(labels)) - 1
        pts = store.points(info.image_id, "centroids")
        assert len(pts) == info.n_instances  # the fragment of set1 id 2 does not add a point
        np.testing.assert_allclose(pts, instance_centroids(labels)[1], atol=1e-4)
        np.testing.assert_array_equal(store.labels(info.image_id)[...], labels)
    assert result.summary["instances"] == sum(len(np.unique(v)) - 1 for v in truth.values())


def test_folder_kromp_layout_metadata_groups_and_splits(tmp_path):
    kromp_like(tmp_path / "src", names=("normal_0", "normal_1", "normal_2", "normal_3", "tumour_0", "tumour_1"))
    records = scan("folder", tmp_path / "src", group_column="Diagnosis", splits={"test": "normal_3"},
                   val_fraction=0.5, split_seed=1)
    by_id = {r.image_id: r for r in records}
    assert by_id["tumour_0"].group == "tumour" and by_id["normal_0"].group == "normal"
    assert by_id["normal_0"].metadata["table"]["Magnification"] == "63x"
    assert by_id["normal_3"].split == "test"
    # half of the remaining train images of each group go to val, chosen by split_seed
    for group, n_rest in (("normal", 3), ("tumour", 2)):
        rest = [r for r in records if r.group == group and r.image_id != "normal_3"]
        assert len(rest) == n_rest
        assert sum(r.split == "val" for r in rest) == int(round(0.5 * n_rest))
    again = scan("folder", tmp_path / "src", group_column="Diagnosis", splits={"test": "normal_3"},
                 val_fraction=0.5, split_seed=1)
    assert [r.split for r in again] == [r.split for r in records]
    other = [r.split for r in scan("folder", tmp_path / "src", val_fraction=0.5, split_seed=2)]
    assert other.count("val") == 3


def test_folder_cellpose_layout_and_group_pattern(tmp_path):
    for name in ("HeLa_01", "HeLa_02", "U2OS_01"):
        labels = blob_labels(seed=len(name)).astype(np.uint16)
        write_tif(tmp_path / "src" / f"{name}.tif", image_for(labels))
        write_tif(tmp_path / "src" / f"{name}_masks.tif", labels)
    records = scan("folder", tmp_path / "src", group_pattern=r"^([A-Za-z0-9]+)_")
    assert sorted(r.image_id for r in records) == ["HeLa_01", "HeLa_02", "U2OS_01"]
    assert {r.group for r in records} == {"HeLa", "U2OS"}


def test_folder_explicit_templates(tmp_path):
    labels = blob_labels()
    write_png(tmp_path / "src/raw/a.png", image_for(labels, np.uint8))
    write_tif(tmp_path / "src/gt/a_label.tif", labels.astype(np.uint16))
    records = scan("folder", tmp_path / "src", images="raw/*.png", labels="gt/{stem}_label.tif", group="cells")
    assert len(records) == 1 and records[0].group == "cells"
    np.testing.assert_array_equal(records[0].load_labels(), labels)


def test_folder_unknown_layout_lists_known_ones(tmp_path):
    write_tif(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="(?s)no known folder layout.*labels=") as err:
        scan("folder", tmp_path)
    assert "Usiigaci" in str(err.value)


def test_bad_importer_option_is_a_recipe_error(tmp_path):
    from weakseg.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown key 'imagse'.*did you mean 'images'"):
        build_importer("folder", {"imagse": "*.tif"})
    with pytest.raises(RecipeError, match="regular expression"):
        build_importer("folder", {"splits": {"test": "set(3"}})


# ---- points ---------------------------------------------------------------------------------


def test_points_importer_napari_and_yx_csv(tmp_path):
    src = tmp_path / "src"
    write_tif(src / "a.tif", np.zeros((40, 50), np.uint16))
    write_tif(src / "b.tif", np.zeros((40, 50), np.uint16))
    (src / "a.csv").write_text("index,axis-0,axis-1\n0,10.0,20.0\n1,30,5\n")  # napari: pixel centres at integers
    (src / "b.csv").write_text("x,y\n20.5,10.5\n")  # named columns in any order
    run_import("points", src, tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    np.testing.assert_allclose(store.points("a", "csv"), [[10.5, 20.5], [30.5, 5.5]])
    np.testing.assert_allclose(store.points("b", "csv"), [[10.5, 20.5]])
    assert store.info("a").n_points == {"csv": 2} and not store.info("a").has_labels


def test_points_outside_image_names_csv(tmp_path):
    src = tmp_path / "src"
    write_tif(src / "a.tif", np.zeros((40, 50), np.uint16))
    (src / "a.csv").write_text("y,x\n10,20\n45,3\n")
    with pytest.raises(DataError, match=r"a\.csv: 1 point\(s\) lie outside the 40x50 image.*y=45"):
        run_import("points", src, tmp_path / "s.zarr")


# ---- a431 -----------------------------------------------------------------------------------


def test_a431_separate_nuclei_and_channel(tmp_path):
    from weakseg.data.synthetic import synthetic_image
    from weakseg.recipe import SyntheticData

    syn = [synthetic_image(SyntheticData(size=128, cell_diameter=22, seed=2), i) for i in range(2)]
    src = tmp_path / "src"
    for k, s in enumerate(syn):
        write_tif(src / f"img_{k}.tif", s.image[0])
        write_tif(src / "nuclei" / f"img_{k}.tif", s.nuclei)
        write_tif(src / f"masks_{k}.tif", s.labels.astype(np.uint16))
        write_tif(src / "two" / f"cell_{k}.tif", np.stack([s.image[0], s.nuclei]), photometric="minisblack")
    result = run_import(
        "a431", src, tmp_path / "a.zarr",
        options={"images": "img_*.tif", "nuclei": "nuclei/{stem}.tif", "labels": "{stem:img=masks}.tif"},
        label_sources=[{"type": "nuclei", "diameter": 9.0}],
    )
    store = open_store(tmp_path / "a.zarr")
    info = store.info("img_0")
    assert info.has_nuclei and info.has_labels and result.images == 2
    np.testing.assert_array_equal(store.nuclei("img_0")[...], syn[0].nuclei)
    key = next(k for k in info.point_sources if k.startswith("nuclei"))
    assert abs(info.n_points[key] - len(syn[0].centers)) <= 0.15 * len(syn[0].centers)

    run_import("a431", src / "two", tmp_path / "b.zarr", options={"nuclear_channel": 1})
    store = open_store(tmp_path / "b.zarr")
    assert store.info("cell_0").shape == (1, 128, 128)  # the nuclear channel left the image
    np.testing.assert_array_equal(store.nuclei("cell_0")[...], syn[0].nuclei)
    np.testing.assert_array_equal(store.image("cell_0")[0], syn[0].image[0])


def test_a431_needs_a_stain(tmp_path):
    write_tif(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="nuclear stain"):
        scan("a431", tmp_path)


def test_a431_missing_stain_file_kept_channel_and_bad_channel(tmp_path):
    labels = blob_labels((48, 56), n=3, seed=4)
    img = image_for(labels, np.uint8)
    write_tif(tmp_path / "sep" / "a.tif", img)
    write_tif(tmp_path / "sep" / "nuclei" / "a.tif", img)
    write_tif(tmp_path / "sep" / "b.tif", img)  # no stain file
    result = run_import("a431", tmp_path / "sep", tmp_path / "s.zarr", skip_bad=True,
                        options={"images": "*.tif", "nuclei": "nuclei/{stem}.tif"}, label_sources=[])
    assert result.images == 1 and [s["image_id"] for s in result.skipped] == ["b"]
    assert "no nuclear-stain image found" in result.skipped[0]["error"]

    write_tif(tmp_path / "two" / "c.tif", np.stack([img, img // 2]), photometric="minisblack")
    run_import("a431", tmp_path / "two", tmp_path / "k.zarr", label_sources=[],
               options={"nuclear_channel": 1, "keep_nuclear_channel": True})
    kept = open_store(tmp_path / "k.zarr")
    assert kept.info("c").shape == (2, 48, 56)
    np.testing.assert_array_equal(kept.nuclei("c")[...], img // 2)
    with pytest.raises(DataError, match="nuclear_channel=5 but the image has 2 channel"):
        run_import("a431", tmp_path / "two", tmp_path / "x.zarr", options={"nuclear_channel": 5}, label_sources=[])


# ---- coco / livecell --------------------------------------------------------------------------


def _coco_files(root, json_name="livecell_coco_train.json", images_dir="images"):
    """Two LIVECell-named images: a polygon square, an uncompressed RLE and a compressed RLE."""
    from pycocotools import mask as mask_utils

    h, w = 30, 40
    for name in ("A172_Phase_A7_1_00d00h00m_1.tif", "BV2_Phase_B4_2_01d00h00m_3.tif"):
        write_tif(root / images_dir / name.split("_")[0] / name, np.full((h, w), 100, np.uint8))
    square = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]  # x, y pairs: pixels 5..14
    m2 = np.zeros((h, w), np.uint8, order="F")
    m2[20:25, 30:36] = 1
    m3 = np.zeros((h, w), np.uint8, order="F")
    m3[2:6, 20:28] = 1
    rle3 = mask_utils.encode(np.asfortranarray(m3))
    rle3["counts"] = rle3["counts"].decode()
    # uncompressed RLE: column-major run lengths starting with background
    flat = m2.flatten(order="F")
    runs, current, count = [], 0, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = v, 1
    runs.append(count)
    data = {
        "images": [
            {"id": 1, "file_name": "A172_Phase_A7_1_00d00h00m_1.tif", "height": h, "width": w},
            {"id": 2, "file_name": "BV2_Phase_B4_2_01d00h00m_3.tif", "height": h, "width": w},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": square, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            {"id": 11, "image_id": 1, "segmentation": {"size": [h, w], "counts": runs}, "bbox": [30, 20, 6, 5],
             "iscrowd": 0},
            {"id": 12, "image_id": 2, "segmentation": rle3, "bbox": [20, 2, 8, 4], "iscrowd": 0},
            {"id": 13, "image_id": 2, "segmentation": rle3, "bbox": [20, 2, 8, 4], "iscrowd": 0},  # duplicate
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    (root / json_name).parent.mkdir(parents=True, exist_ok=True)
    (root / json_name).write_text(json.dumps(data))
    return m2, m3


def test_coco_polygons_and_rle(tmp_path):
    m2, m3 = _coco_files(tmp_path / "src")
    run_import("coco", tmp_path / "src", tmp_path / "s.zarr", options={"dedupe_iou": 0.75})
    store = open_store(tmp_path / "s.zarr")
    a = store.info("A172_Phase_A7_1_00d00h00m_1")
    b = store.info("BV2_Phase_B4_2_01d00h00m_3")
    assert (a.group, b.group) == ("A172", "BV2") and store.groups == ["A172", "BV2"]
    assert a.split == b.split == "train"  # from the json file name
    la = store.labels(a.image_id)[...]
    assert (la == 1).sum() == 100 and (la[5:15, 5:15] == 1).all()  # the polygon square
    np.testing.assert_array_equal(la == 2, m2.astype(bool))  # uncompressed RLE
    lb = store.labels(b.image_id)[...]
    np.testing.assert_array_equal(lb > 0, m3.astype(bool))  # compressed RLE, duplicate removed
    assert b.n_instances == 1 and b.n_points == {"centroids": 1}


def test_livecell_offline_message_and_local_layout(tmp_path, monkeypatch):
    root = tmp_path / "LIVECell"
    with pytest.raises(DataError) as err:
        scan("livecell", root, download=False)
    msg = str(err.value)
    assert "livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021/images.zip" in msg
    assert "annotations/LIVECell/livecell_coco_test.json" in msg and "images/livecell_test_images" in msg

    # a download that cannot connect fails with the same advice (port 9: connection refused at once)
    monkeypatch.setenv("WEAKSEG_LIVECELL_URL", "http://127.0.0.1:9/LIVECell_dataset_2021")
    with pytest.raises(DataError, match="could not download LIVECell.*livecell_coco_train.json"):
        scan("livecell", root, parts=("train",))

    # the official layout, built by hand, imports with the coco importer
    _coco_files(root, "annotations/LIVECell/livecell_coco_train.json", "images/livecell_train_val_images")
    records = scan("livecell", root, parts=("train",), download=False)
    assert sorted(r.group for r in records) == ["A172", "BV2"]
    assert len(records[1].load_labels().nonzero()[0]) == 32  # deduplicated by default (box IoU 0.75)
    only = scan("livecell", root, parts=("train",), download=False, cell_lines=("bv2",))
    assert [r.group for r in only] == ["BV2"]


def test_folder_split_column_from_metadata(tmp_path):
    kromp_like(tmp_path / "src", names=("a", "b", "c"))
    (tmp_path / "src/image_description.csv").write_text(
        "Image_Name;Diagnosis;Train-/Testset split\na;x;train\nb;x;test\nc;y;Train\n"
    )
    records = scan("folder", tmp_path / "src", split_column="Train-/Testset split")
    assert {r.image_id: r.split for r in records} == {"a": "train", "b": "test", "c": "train"}
    with pytest.raises(DataError, match="no column 'Split'"):
        scan("folder", tmp_path / "src", split_column="Split")
