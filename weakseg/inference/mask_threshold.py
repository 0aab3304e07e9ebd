"""The mask threshold a model is used with: the recipe's number, or the strategy's label-free one.

``eval.mask_threshold: auto`` asks the strategy (``label_free_mask_threshold(cell_diameter)``, e.g. CKS,
whose prior fixes the probability the principal gives a cell's edge) for a threshold that needs no mask;
a strategy without one, or a run whose training cell size is unknown, gets 0.5. The training cell size
comes from the run's recorded input scale, else from its size model.
"""

from __future__ import annotations

from typing import Any

DEFAULT = 0.5


def resolve_mask_threshold(value: Any, strategy: Any, cell_diameter: float | None) -> float:
    """``value`` as a number: itself, or for ``"auto"`` the strategy's label-free threshold (else 0.5)."""
    if value != "auto":
        return float(value)
    fn = getattr(strategy, "label_free_mask_threshold", None)
    found = fn(cell_diameter) if callable(fn) else None
    return float(found) if found is not None else DEFAULT


def training_cell_diameter(ckpt: Any) -> float | None:
    """The cell diameter (model pixels) a checkpoint was trained at: its input scale's, else its size model's."""
    from weakseg.inference.scale import checkpoint_input_scale
    from weakseg.inference.sizing import SizeModel

    info = checkpoint_input_scale(ckpt)
    if info is not None and info.cell_diameter:
        return float(info.cell_diameter)
    model = SizeModel.from_dict(getattr(ckpt, "size_model", None))
    return float(model.cell_diameter) if model is not None else None


def checkpoint_mask_threshold(strategy: Any, ckpt: Any) -> float:
    """The default mask threshold of a loaded checkpoint (its recipe's ``eval.mask_threshold`` resolved)."""
    return resolve_mask_threshold(ckpt.recipe.eval.mask_threshold, strategy, training_cell_diameter(ckpt))
