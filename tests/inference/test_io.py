"""Reading inputs: TIFF (memory-mapped or compressed), PNG, zarr, OME-Zarr, folders, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from weakseg.errors import DataError
from weakseg.inference.io import discover, open_image, read_image


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(2, 70, 90)).astype(np.uint16)


def test_uncompressed_tiff_is_memory_mapped(tmp_path, image):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image, metadata={"axes": "CYX"})
    with open_image(path) as view:
        assert isinstance(view.array, np.memmap)
        assert view.shape == (2, 70, 90)
        np.testing.assert_array_equal(view.read(10, 20, 30, 50), image[:, 10:20, 30:50])


def test_compressed_tiled_tiff_reads_regions_lazily(tmp_path, image):
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, image, compression="zlib", tile=(32, 32), metadata={"axes": "CYX"})
    with open_image(path) as view:
        assert not isinstance(view.array, np.ndarray)
        np.testing.assert_array_equal(view.read(5, 60, 7, 80), image[:, 5:60, 7:80])


def test_rgb_tiff_and_png_are_channel_first(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 255, size=(40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    expected = np.moveaxis(rgb, -1, 0)
    for name in ("rgb.tif", "rgb.png", "rgba.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name), expected)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), rgb[None, ..., 0])


def test_singleton_axes_are_dropped_and_stacks_refused(tmp_path, image):
    tifffile.imwrite(tmp_path / "tz.tif", image[None, None], metadata={"axes": "TZCYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "tz.tif"), image)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image]), metadata={"axes": "ZCYX"})
    with pytest.raises(DataError, match="stack.tif.*axis 'z' has length 2"):
        read_image(tmp_path / "stack.tif")


def test_ome_zarr_and_plain_zarr(tmp_path, image):
    import zarr

    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w", zarr_format=3)
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"},
                ],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}],
            }
        ],
    }
    root.create_array("0", shape=image.shape, chunks=(1, 32, 32), dtype=image.dtype)[:] = image
    with open_image(tmp_path / "img.ome.zarr") as view:
        assert isinstance(view.array, zarr.Array)
        np.testing.assert_array_equal(view.read(3, 33, 4, 44), image[:, 3:33, 4:44])
    yxc = np.moveaxis(image, 0, -1)
    zarr.create_array(tmp_path / "plain.zarr", shape=yxc.shape, dtype=yxc.dtype)[:] = yxc
    np.testing.assert_array_equal(read_image(tmp_path / "plain.zarr"), image)
    images, problems = discover([tmp_path / "img.ome.zarr", tmp_path / "plain.zarr"])
    assert [i.name for i in images] == ["img", "plain"] and problems == []


def test_collection_of_ome_images_in_one_store(tmp_path, image):
    import zarr

    root = zarr.open_group(tmp_path / "plate.zarr", mode="w", zarr_format=3)
    for name in ("b", "a"):
        g = root.create_group(name)
        g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}]}
        g.create_array("0", shape=image.shape, dtype=image.dtype)[:] = image
    images, problems = discover([tmp_path / "plate.zarr"])
    assert [(i.name, i.key) for i in images] == [("plate_a", "a"), ("plate_b", "b")] and not problems
    with images[1].open() as view:
        np.testing.assert_array_equal(view.read(), image)


def test_folder_discovery_names_and_problems(tmp_path, image):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sub").mkdir()
    tifffile.imwrite(tmp_path / "in" / "x.tif", image)
    tifffile.imwrite(tmp_path / "in" / "sub" / "x.tif", image)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    images, problems = discover(
        [tmp_path / "in", tmp_path / "in" / "sub" / "x.tif", tmp_path / "nope.tif", tmp_path / "empty"]
    )
    assert [i.name for i in images] == ["x", "x_2"]
    assert [p[0] for p in problems] == [str(tmp_path / "nope.tif"), str(tmp_path / "empty")]


def test_unreadable_files_raise_data_error_naming_them(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(DataError, match="broken.tif"):
        read_image(bad)
    png = tmp_path / "broken.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="broken.png"):
        read_image(png)
    with pytest.raises(DataError, match="unsupported file type"):
        read_image(tmp_path / "conftest.py" if (tmp_path / "conftest.py").exists() else _touch(tmp_path / "a.xyz"))


def _touch(path):
    path.write_text("")
    return path
