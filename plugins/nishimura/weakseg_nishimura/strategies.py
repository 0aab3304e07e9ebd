"""The two baseline strategies: Nishimura-1 (trained heatmap U-Net) and seeded watershed (no training)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.components import Batch
from weakseg.strategy import StrategyModule
from weakseg_nishimura.heatmaps import batch_heatmaps
from weakseg_nishimura.principal import NishimuraPrincipal
from weakseg_nishimura.unet import UNet
from weakseg_nishimura.watershed import SeededWatershedPrincipal

if TYPE_CHECKING:  # pragma: no cover
    from weakseg_nishimura.plugin import NishimuraConfig, SeededWatershedConfig


class NishimuraStrategy(StrategyModule):
    """Nishimura-1 (MICCAI 2019): a U-Net regresses max-combined Gaussians around the points (MSE).

    The loss is ``heatmap_mse``, the mean squared error between the sigmoid output and the target
    made from ``batch.points`` (sigma from the config). Prediction: :class:`NishimuraPrincipal`.
    """

    def __init__(self, config: NishimuraConfig, in_channels: int) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(in_channels, 1, base=config.unet_base, depth=config.unet_depth)

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        logits = self.unet(batch.image)
        target = batch_heatmaps(batch.points, tuple(batch.image.shape[-2:]), self.config.sigma)
        target = target.to(device=logits.device)
        return {"heatmap_mse": F.mse_loss(torch.sigmoid(logits.float()), target)}

    def principal(self) -> NishimuraPrincipal:
        return NishimuraPrincipal(self.unet, self.config)

    def panel(self, image: torch.Tensor) -> dict[str, np.ndarray]:
        """The predicted cell-likelihood heatmap (H, W) in [0, 1]."""
        batch = image if image.ndim == 4 else image[None]
        device = next(self.unet.parameters()).device
        heat = self.principal().heatmap(torch.as_tensor(batch, dtype=torch.float32).to(device))[0]
        return {"heatmap": heat.detach().float().cpu().numpy()}


class SeededWatershedStrategy(StrategyModule):
    """Seeded watershed: nothing to train (``trainable = False``), no parameters."""

    trainable = False

    def __init__(self, config: SeededWatershedConfig, in_channels: int) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """No losses: the engine does not train strategies with ``trainable = False``."""
        return {}

    def principal(self) -> SeededWatershedPrincipal:
        return SeededWatershedPrincipal(self.config)
