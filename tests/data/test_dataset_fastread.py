"""Direct chunk reads give exactly what zarr gives, and fall back to zarr when they cannot."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from weakseg.data.fastread import ChunkReader, RegionReader


@pytest.mark.parametrize(
    ("dtype", "compressors"),
    [("uint16", "auto"), ("int32", None), (">f4", "auto"), ("uint8", zarr.codecs.GzipCodec())],
)
def test_regions_match_zarr(tmp_path, dtype, compressors):
    rng = np.random.default_rng(0)
    data = (rng.random((2, 150, 170)) * 1000).astype(dtype)
    data[:, :64, :64] = 0  # a chunk left unwritten: it reads as the fill value
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=data.shape,
        chunks=(2, 64, 48),
        dtype=dtype,
        compressors=compressors,
        fill_value=0,
    )
    arr[...] = data
    arr = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    reader = RegionReader(arr)
    assert reader.fast is not None
    for _ in range(20):
        y0, x0 = rng.integers(0, 150), rng.integers(0, 170)
        y1, x1 = rng.integers(y0, 151), rng.integers(x0, 171)
        got = reader[:, y0:y1, x0:x1]
        assert got.dtype == np.dtype(dtype).newbyteorder("=")
        assert np.array_equal(got, data[:, y0:y1, x0:x1])
    assert np.array_equal(reader[...], data)
    assert np.array_equal(reader[:, 140:400, 160:999], data[:, 140:, 160:])  # stops past the edge clip


def test_unsupported_layouts_fall_back_to_zarr(tmp_path):
    data = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    arr = zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=(16, 16), shards=(32, 32), dtype="int32")
    arr[...] = data
    assert ChunkReader.for_array(arr) is None
    reader = RegionReader(arr)
    assert np.array_equal(reader[5:40, 3:60], data[5:40, 3:60])
    assert np.array_equal(reader[::2, 1], data[::2, 1])  # strided and integer keys go through zarr too
