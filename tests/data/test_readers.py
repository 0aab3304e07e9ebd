"""The image readers' axis rules (one set for training data and prediction) and compressed TIFFs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from weakseg.data import readers
from weakseg.errors import DataError
from weakseg.inference import io
from weakseg.inference.tiling import ChannelFirst, as_view


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 4000, size=(3, 40, 50)).astype(np.uint16)


@pytest.mark.parametrize("compression", ["lzw", "deflate", "zlib"])
def test_compressed_tiffs_read_through_both_readers(tmp_path, image, compression):
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, image, compression=compression, photometric="minisblack", metadata={"axes": "CYX"})
    np.testing.assert_array_equal(readers.read_image(path), image)
    np.testing.assert_array_equal(io.read_image(path), image)
    lazy = readers.read_image(path, lazy_pixels=10)  # the region-by-region reader too
    np.testing.assert_array_equal(lazy[:, 5:20, 10:30], image[:, 5:20, 10:30])


def test_guess_axes_reads_rgb_last_and_channels_first():
    assert readers.guess_axes((256, 256, 3), "a") == "yxc"
    assert readers.guess_axes((3, 256, 256), "a") == "cyx"
    assert readers.guess_axes((2, 40, 4), "a") == "cyx"  # few channels first wins over a narrow image
    assert readers.guess_axes((1, 1, 3, 40, 50), "a") == "tzcyx"
    assert readers.guess_axes((40, 50), "a") == "yx"
    with pytest.raises(DataError, match="big: cannot tell the axes"):
        readers.guess_axes((40, 50, 60), "big")


def test_array_to_cyx_and_as_view_agree_for_every_layout(image):
    hwc = np.moveaxis(image, 0, -1)
    for array in (image, hwc):
        np.testing.assert_array_equal(readers.array_to_cyx(array), image)
        np.testing.assert_array_equal(as_view(array).read(), image)
    np.testing.assert_array_equal(as_view(image[0]).read(), image[:1])


def test_channel_layout_merges_channels_and_refuses_stacks(tmp_path, image):
    assert readers.channel_layout("CYX", (3, 40, 50), "f") == ([0], 1, 2)
    assert readers.channel_layout("YXS", (40, 50, 3), "f") == ([2], 0, 1)
    with pytest.raises(DataError, match="f: axis 'z' has length 2"):
        readers.channel_layout("ZYX", (2, 40, 50), "f")
    with pytest.raises(DataError, match="f: the image has axes 'CYX'.*20 planes"):
        readers.channel_layout("CYX", (20, 40, 50), "f")
    # a TIFF without axis names (tifffile writes 'QYX'): channels for both readers alike
    tifffile.imwrite(tmp_path / "plain.tif", image, photometric="minisblack", metadata=None)
    np.testing.assert_array_equal(readers.read_image(tmp_path / "plain.tif"), image)
    np.testing.assert_array_equal(io.read_image(tmp_path / "plain.tif"), image)
    # a z-stack is refused by both, naming the file
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image[0], image[1]]), metadata={"axes": "ZYX"})
    for read in (readers.read_image, io.read_image):
        with pytest.raises(DataError, match="stack.tif.*axis 'z' has length 2"):
            read(tmp_path / "stack.tif")


def test_channel_first_views_of_labelled_axes(image):
    view = ChannelFirst(np.moveaxis(image, 0, -1)[None], "zyxc", "v")
    assert view.shape == (3, 40, 50)
    np.testing.assert_array_equal(view.read(3, 9, 4, 20), image[:, 3:9, 4:20])
    transposed = ChannelFirst(image[0].T, "xy", "t")
    np.testing.assert_array_equal(transposed.read(), image[:1])


def test_palette_png_indices_for_labels_colours_for_prediction(tmp_path):
    from PIL import Image

    indices = np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) % 3
    im = Image.fromarray(indices.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(readers.read_image(tmp_path / "p.png")[0], indices)
    rgb = io.read_image(tmp_path / "p.png")
    assert rgb.shape == (3, 40, 50)
    np.testing.assert_array_equal(rgb[0], np.where(indices == 1, 255, 0))


def test_compressed_tiffs_import_into_a_store_through_the_cli(tmp_path):
    """``weakseg data import folder`` reads LZW and deflate images and label images (Fiji's usual compressions)."""
    import subprocess
    import sys

    from weakseg.data.store import open_store

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    rng = np.random.default_rng(1)
    expected = {}
    for compression in ("lzw", "deflate"):
        img = rng.integers(0, 255, size=(48, 56)).astype(np.uint8)
        lab = np.zeros((48, 56), np.uint16)
        lab[5:15, 5:15], lab[25:40, 30:50] = 1, 2
        tifffile.imwrite(src / "images" / f"{compression}.tif", img, compression=compression)
        tifffile.imwrite(src / "labels" / f"{compression}.tif", lab, compression=compression)
        expected[compression] = (img, lab)
    out = tmp_path / "s.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "weakseg", "data", "import", "folder", str(src), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    store = open_store(out)
    for compression, (img, lab) in expected.items():
        np.testing.assert_array_equal(np.asarray(store.image(compression))[0], img)
        np.testing.assert_array_equal(np.asarray(store.labels(compression)), lab)
