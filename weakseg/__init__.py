"""weakseg: train cell instance-segmentation models from weak labels (one point per cell).

The public surface is small: recipes (``weakseg.recipe``), registries filled by plugins
(``weakseg.plugins.registries()``), ``weakseg.train(recipe)`` to run a recipe as ``weakseg run``
does, and ``weakseg.load(checkpoint)`` for prediction. Importing the package is cheap: torch,
MLflow and the plugins load when a function needs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weakseg.errors import WeaksegError
from weakseg.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["WeaksegError", "hookimpl", "load", "train", "__version__"]


def load(checkpoint: str, **kwargs: Any) -> Any:
    """Load a trained checkpoint as a predictor with ``.predict(array)`` (see weakseg.inference)."""
    from weakseg.inference.predictor import load_predictor

    return load_predictor(checkpoint, **kwargs)


def train(
    recipe: str | Path | Any,
    output: str | Path | None = None,
    resume: bool = False,
    *,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    **dotted_overrides: Any,
) -> Any:
    """Train, evaluate and track a recipe, exactly as ``weakseg run RECIPE`` does.

    ``recipe`` is a YAML file (``extends`` resolved) or an already validated
    :class:`weakseg.recipe.Recipe`. Recipe keys are overridden by dotted path, like ``--set``:
    ``weakseg.train("recipes/demo.yaml", overrides={"train.steps": 50})`` or
    ``weakseg.train("recipes/demo.yaml", **{"train.steps": 50})``. ``output`` replaces
    ``output.dir`` (``--output``); ``resume=True`` continues the run's last checkpoint in the same
    MLflow run (``--resume``).

    Returns the run's :class:`weakseg.engine.run.RunResult`: ``run_dir``, ``checkpoint`` (the
    ``last.ckpt`` to pass to :func:`load`), ``run_id`` and ``tracking_uri`` of the MLflow run, and
    the final evaluation ``metrics`` (``{"val/AP50": ...}``). A bad recipe or key raises
    :class:`WeaksegError` naming it; Ctrl-C raises ``TrainingInterrupted`` after a checkpoint.
    """
    from weakseg.engine.run import run_recipe
    from weakseg.recipe import Recipe, apply_overrides, load_recipe, structure

    changes = {**(overrides or {}), **dotted_overrides}
    # JSON is YAML, so each value reaches the recipe exactly as `--set KEY=VALUE` would parse it
    sets = [f"{key}={json.dumps(_plain(value))}" for key, value in changes.items()]
    if isinstance(recipe, Recipe):
        if sets:
            recipe = structure(apply_overrides(recipe.to_dict(), sets), Recipe)
    else:
        recipe = load_recipe(recipe, sets)
    return run_recipe(recipe, resume=resume, output=output, progress=progress)


def _plain(value: Any) -> Any:
    """Paths become strings and tuples lists, so that an override value can be written as JSON."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
