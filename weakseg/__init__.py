"""weakseg: train cell instance-segmentation models from weak labels (one point per cell).

The public surface is small: recipes (``weakseg.recipe``), registries filled by plugins
(``weakseg.plugins.registries()``), and ``weakseg.load(checkpoint)`` for prediction.
"""

from __future__ import annotations

from typing import Any

from weakseg.errors import WeaksegError
from weakseg.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["WeaksegError", "hookimpl", "load", "__version__"]


def load(checkpoint: str, **kwargs: Any) -> Any:
    """Load a trained checkpoint as a predictor with ``.predict(array)`` (see weakseg.inference)."""
    from weakseg.inference.predictor import load_predictor

    return load_predictor(checkpoint, **kwargs)
