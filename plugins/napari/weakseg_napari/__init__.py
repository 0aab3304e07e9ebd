"""weakseg's napari plugin: open stores and predictions, save points for training, predict, correct, retrain.

Installed with ``pip install "weakseg[napari]"``; napari finds it through the ``napari.manifest`` entry
point (``napari.yaml``). The reader and writer need no Qt; the dock widget (:mod:`weakseg_napari._widget`)
drives the correction loop of :mod:`weakseg.inference.correct` in worker threads.
"""

from __future__ import annotations

__all__ = ["get_reader", "write_points"]


def __getattr__(name: str):  # the widget module imports Qt: load only what is asked for
    if name == "get_reader":
        from weakseg_napari._reader import get_reader

        return get_reader
    if name == "write_points":
        from weakseg_napari._writer import write_points

        return write_points
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
