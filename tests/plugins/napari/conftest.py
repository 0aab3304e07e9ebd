"""Fixtures for the napari plugin tests: a display for Qt, the plugin's manifest, the blob model.

napari draws layers with OpenGL. Qt's ``offscreen`` platform has none, so on a machine without a
screen these tests start an Xvfb server of their own (``apt-get install xvfb``) and use Qt's ``xcb``
platform on it; with neither a display nor Xvfb, the tests that need a viewer skip and say why.
With ``WEAKSEG_REQUIRE_NAPARI=1`` (set by the nox ``tests`` session) a missing napari, npe2,
pytest-qt or display is an error instead of a skip, so CI cannot pass without running them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]
if str(TESTS) not in sys.path:  # the inference tests' blob model is imported by package name
    sys.path.insert(0, str(TESTS))

from napari_helpers import REQUIRED, require, start_xvfb  # noqa: E402


@pytest.fixture(scope="session")
def qt_display():
    """A display napari can draw on: $DISPLAY, else an Xvfb started here; skip (or fail) without one."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        yield os.environ.get("DISPLAY")
        return
    started = start_xvfb()
    if started is None:
        message = (
            "napari needs OpenGL, which Qt's offscreen platform lacks, and neither $DISPLAY nor Xvfb is "
            "available: apt-get install xvfb"
        )
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    proc, display = started
    before = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ["DISPLAY"], os.environ["QT_QPA_PLATFORM"] = display, "xcb"
    try:
        yield display
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def viewer(qt_display, request):
    """A real napari Viewer (not shown) under pytest-qt, closed after the test."""
    require("pytestqt")
    napari = require("napari")
    # torchvision loads triton, which bundles an LLVM; loaded after Mesa's OpenGL (which has its own) it
    # crashes the process. The widget keeps torch out of napari's process, but the rest of the suite
    # trains in this one: load it before the first viewer draws.
    import torchvision  # noqa: F401

    qtbot = request.getfixturevalue("qtbot")
    v = napari.Viewer(show=False)
    yield v
    qtbot.wait(10)
    v.close()


@pytest.fixture
def blob_checkpoint(tmp_path, tmp_path_factory, plugin_registration, monkeypatch):
    """A real checkpoint of the training-free blob model of the inference tests (exact answers).

    The strategy is registered in this process and, through a ``*.dist-info`` entry point on
    PYTHONPATH, in the child processes the widget starts.
    """
    from inference import blob_model

    site = tmp_path_factory.mktemp("site")
    info = site / "weakseg_blob_test-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: weakseg-blob-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[weakseg]\nblob_test = {blob_model.__name__}\n")
    paths = [str(TESTS), str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    plugin_registration(blob_model)
    return blob_model.write_blob_checkpoint(tmp_path / "blob.ckpt")


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Tiny convolutions run fastest on one thread."""
    yield
