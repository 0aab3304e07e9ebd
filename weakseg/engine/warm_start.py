"""Start a run's principal model from another run's trained principal (``model.init_from``).

The CKS paper's second initialisation scheme ("CKS-2", Yu, Sec. IV-A) pre-trains the principal
model with masks on a *different* dataset (TissueNet) and then trains it from points on the target
data; pre-training "was clearly beneficial" (Table III). In weakseg any finished run can play that
part: a supervised run on another dataset, a run on synthetic cells, or a points-only run on related
images. By default only the principal (what prediction uses) is copied; the collaborator, optimiser and
step count start fresh, so the new run's budget and schedule are its own. ``model.init_scope: all``
copies the collaborator too: a run that continues a model on more (e.g. corrected) images keeps what
its collaborator learnt instead of teaching the principal from a random one again.

Tensors are matched by name and shape, so a source with another head size or channel count still
lends the parts that fit (typically the backbone). A source that lends nothing is refused: that is
almost always the wrong checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from weakseg.errors import RecipeError


@attrs.frozen
class WarmStartReport:
    """What :func:`warm_start` copied: tensor names loaded, and those skipped with the reason."""

    source: Path
    scope: str
    source_recipe: str
    source_step: int
    loaded: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        """One line for the console: how many tensors came from where."""
        total = len(self.loaded) + len(self.skipped)
        text = (
            f"model.init_from: {len(self.loaded)}/{total} {self.scope} tensors from {self.source} "
            f"(recipe {self.source_recipe!r}, step {self.source_step})"
        )
        if self.skipped:
            shown = ", ".join(f"{name} ({why})" for name, why in self.skipped[:4])
            more = f" and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
            text += f"; kept fresh: {shown}{more}"
        return text


def warm_start(strategy: Any, source: str | Path, scope: str = "principal") -> WarmStartReport:
    """Copy the principal weights (``scope="all"``: every weight) of the checkpoint or run folder ``source``
    into ``strategy``.

    ``strategy.principal()`` (or the whole strategy) receives every tensor of the source's whose name
    and shape match; the rest of ``strategy`` is untouched. Raises :class:`~weakseg.errors.RecipeError`
    naming ``model.init_from`` when the file cannot be read or no tensor fits.
    """
    from weakseg.checkpoint import CheckpointError, load_strategy

    try:
        donor, ckpt = load_strategy(source, device="cpu")
    except CheckpointError as exc:
        raise RecipeError(f"recipe.model.init_from: {exc}") from None
    target = strategy if scope == "all" else strategy.principal()
    wanted = target.state_dict()
    offered = (donor if scope == "all" else donor.principal()).state_dict()
    loaded: dict[str, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []
    for name, tensor in wanted.items():
        if name not in offered:
            skipped.append((name, "not in the source"))
        elif offered[name].shape != tensor.shape:
            skipped.append((name, f"shape {tuple(offered[name].shape)} vs {tuple(tensor.shape)}"))
        else:
            loaded[name] = offered[name]
    if not any(wanted[name].is_floating_point() for name in loaded):
        raise RecipeError(
            f"recipe.model.init_from: no weight of {ckpt.path} (recipe {ckpt.recipe.name!r}, "
            f"backbone {ckpt.recipe.model.backbone.type if ckpt.recipe.model else None!r}) fits this run's principal "
            "model; initialise from a run with the same backbone and head"
        )
    target.load_state_dict(loaded, strict=False)
    return WarmStartReport(
        source=ckpt.path,
        scope="principal" if scope != "all" else "model",
        source_recipe=ckpt.recipe.name,
        source_step=ckpt.step,
        loaded=tuple(loaded),
        skipped=tuple(skipped),
    )
