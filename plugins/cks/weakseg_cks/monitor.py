"""Is the collaborator's foreground map the right way round? A cheap check logged during CKS training.

A CKS collaborator learns the foreground only from the principal's instance outputs, and during the
warm-up from hard labels that can lock in a random sign: the foreground map may end the warm-up lower on
the cells than around them (measured on synthetic seeds), after which the consistency losses teach both
models the inverted picture. The one thing known about every cell is its point, so the monitor compares
the collaborator's foreground probability at the point pixels with its mean over the whole image:

- ``collab_fg_on_points`` / ``collab_fg_mean``: the two means since the last log interval;
- ``collab_fg_contrast_at_switch``: their difference on the last warm-up step (logged once), with a
  warning when it is not positive.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch


class ForegroundMonitor:
    """Accumulates the collaborator's foreground on points and overall (see the module docstring)."""

    def __init__(self) -> None:
        self._on: torch.Tensor | float = 0.0
        self._mean: torch.Tensor | float = 0.0
        self._n_points = self._n_images = 0
        self._switch: float | None = None

    @torch.no_grad()
    def update(
        self, foreground_logits: torch.Tensor, points: Sequence[torch.Tensor], *, last_warmup_step: bool
    ) -> None:
        """Add one batch: logits (B, H, W) and each image's (N, 2) points (y, x in pixels).

        Sums stay on the logits' device (no host sync per step) except on the last warm-up step."""
        prob = torch.sigmoid(foreground_logits.detach().float())
        h, w = prob.shape[-2:]
        on_sum = prob.new_zeros(())
        n_on = 0
        for b, p in enumerate(points):
            if p.numel() == 0:
                continue
            yx = p.detach().long()
            on_sum = on_sum + prob[b, yx[:, 0].clamp(0, h - 1), yx[:, 1].clamp(0, w - 1)].sum()
            n_on += int(p.shape[0])
        image_sum = prob.mean(dim=(-2, -1)).sum()
        self._on = self._on + on_sum
        self._n_points += n_on
        self._mean = self._mean + image_sum
        self._n_images += int(prob.shape[0])
        if last_warmup_step and n_on:
            self._switch = float(on_sum) / n_on - float(image_sum) / prob.shape[0]
            if self._switch <= 0:
                warnings.warn(
                    "CKS: at the end of the warm-up the collaborator's foreground is not higher on the points "
                    f"than elsewhere (contrast {self._switch:+.3f}): its sign may be inverted; try another "
                    "train.seed, strategy.warmup_steps=0 or model.init=lecun",
                    stacklevel=2,
                )

    def metrics(self) -> dict[str, float]:
        """The means since the last call (and the contrast at the phase switch once it is known)."""
        out: dict[str, float] = {}
        if self._n_points:
            out["collab_fg_on_points"] = float(self._on) / self._n_points
        if self._n_images:
            out["collab_fg_mean"] = float(self._mean) / self._n_images
        if self._switch is not None:
            out["collab_fg_contrast_at_switch"] = self._switch
            self._switch = None
        self._on = self._mean = 0.0
        self._n_points = self._n_images = 0
        return out
