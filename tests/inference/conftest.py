"""Fixtures for the inference tests: the blob strategy registered in-process and a checkpoint of it."""

from __future__ import annotations

import pytest

from . import blob_model


@pytest.fixture
def blob_checkpoint(tmp_path, plugin_registration):
    plugin_registration(blob_model)
    return blob_model.write_blob_checkpoint(tmp_path / "blob.ckpt")
