"""The mask threshold a model is used with: the recipe's number, or the strategy's label-free one.

``eval.mask_threshold: auto`` asks the strategy (``label_free_mask_threshold(cell_diameter)``, e.g. CKS,
whose prior fixes the probability the principal gives a cell's edge) for a threshold that needs no mask;
a strategy without one, or a run trained without a cell size (``data.target_cell_size``, recorded in the
checkpoint's input scale), gets 0.5, so that evaluation during training and ``weakseg evaluate`` /
``weakseg predict`` afterwards use the same threshold.
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
    """The cell diameter (model pixels) a checkpoint's images were resized to, or None (not normalised)."""
    from weakseg.inference.scale import checkpoint_input_scale

    info = checkpoint_input_scale(ckpt)
    return float(info.cell_diameter) if info is not None and info.cell_diameter else None


def checkpoint_mask_threshold(strategy: Any, ckpt: Any) -> float:
    """The default mask threshold of a loaded checkpoint (its recipe's ``eval.mask_threshold`` resolved)."""
    return resolve_mask_threshold(ckpt.recipe.eval.mask_threshold, strategy, training_cell_diameter(ckpt))
