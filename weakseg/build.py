"""Build runtime objects from a validated recipe (the one place the engine turns specs into models)."""

from __future__ import annotations

from typing import Any

from weakseg.components import DataSummary
from weakseg.recipe import Recipe, check_recipe


def build_strategy(recipe: Recipe, data: DataSummary) -> Any:
    """Build the recipe's strategy (a ``weakseg.strategy.StrategyModule``) for data like ``data``.

    The strategy's config receives the whole recipe (it reads ``recipe.model`` and
    ``recipe.collaborator``) and the data summary (channels, groups). The strategy's own recipe
    check (:func:`weakseg.recipe.check_recipe`) runs first, so a recipe that was structured in code
    fails with the same key paths as one loaded from a file.
    """
    from weakseg.strategy import StrategyModule

    check_recipe(recipe)
    strategy = recipe.strategy.build(recipe=recipe, data=data)
    if not isinstance(strategy, StrategyModule):
        raise TypeError(
            f"strategy {recipe.strategy.type!r} built {type(strategy).__name__}, not a weakseg.strategy.StrategyModule"
        )
    return strategy
