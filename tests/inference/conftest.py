"""Fixtures for the inference tests: the blob strategy registered in-process and a checkpoint of it."""

from __future__ import annotations

import pytest

from . import blob_model


@pytest.fixture
def blob_checkpoint(tmp_path, plugin_registration):
    plugin_registration(blob_model)
    return blob_model.write_blob_checkpoint(tmp_path / "blob.ckpt")


@pytest.fixture
def cli_env(tmp_path_factory) -> dict:
    """Environment for ``python -m weakseg`` subprocesses that see the blob strategy through a real
    entry point: a ``*.dist-info`` folder declaring ``[weakseg] blob_test = inference.blob_model``."""
    import os
    from pathlib import Path

    tests_dir = Path(__file__).resolve().parent.parent
    site = tmp_path_factory.mktemp("site")
    info = site / "weakseg_blob_test-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: weakseg-blob-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[weakseg]\nblob_test = {blob_model.__name__}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tests_dir), str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env
