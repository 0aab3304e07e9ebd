"""The torch base class of every strategy.

Plugins import this inside their ``build`` methods so that listing plugins never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from weakseg.components import Batch, Phase


class StrategyModule(nn.Module):
    """Owns the trained models; ``forward(batch, step)`` returns named scalar losses.

    - holds every trainable model as a submodule, so ``state_dict()`` is the whole checkpoint and
      the engine can wrap the strategy in DistributedDataParallel;
    - ``forward(batch, step)`` returns named scalar losses; the engine back-propagates their sum
      and logs each one as ``train/<name>``;
    - ``phases()`` declares named phases (CKS warm-up, ...); the engine logs the phase;
    - ``principal()`` returns the model used for prediction (``predict(image) -> list[Instances]``);
    - ``panel(image, group)`` may return extra maps for the evaluation figure;
    - ``interval_metrics()`` may return extra values, logged as ``train/<name>`` each log interval;
    - ``parameter_groups()`` names the parts whose learning rate a recipe may scale
      (``train.optimizer.lr_factors``).
    """

    #: False for training-free strategies (e.g. seeded watershed): the engine skips the loop.
    trainable: bool = True

    def phases(self) -> list[Phase]:
        return [Phase("main", 0)]

    def phase_at(self, step: int) -> str:
        """Name of the phase that ``step`` falls in."""
        current = self.phases()[0].name
        for phase in sorted(self.phases(), key=lambda p: p.start):
            if step >= phase.start:
                current = phase.name
        return current

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def principal(self) -> Any:
        """The model used for prediction: has ``predict(image (B,C,H,W)) -> list[Instances]``."""
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, nn.Module]:
        """Named parts of the strategy (e.g. ``principal``, ``collaborator``) that
        ``train.optimizer.lr_factors`` may give their own learning-rate factor; parameters outside every
        part keep the recipe's rate. None by default."""
        return {}

    def label_free_mask_threshold(self, cell_diameter: float | None) -> float | None:
        """The mask threshold this strategy's training implies for cells of ``cell_diameter`` model pixels,
        used by ``eval.mask_threshold: auto``; None (0.5 then) by default."""
        return None

    def interval_metrics(self) -> dict[str, float]:
        """Values (not losses) to log as ``train/<name>`` at each log interval, e.g. counts since the last
        call; called on every rank (rank 0 logs its own). None by default."""
        return {}

    def panel(self, image: torch.Tensor, group: int = 0) -> dict[str, np.ndarray]:
        """Extra float maps in [0, 1] (H, W) of one image (1, C, H, W) of ``group`` for the evaluation
        figure (e.g. collaborator foreground and border); none by default."""
        return {}
