"""The Nishimura-1 prediction model: heatmap -> peaks -> guided backprop -> cells -> ``Instances``.

Nishimura, Ker & Bise, "Weakly Supervised Cell Instance Segmentation by Propagating from Detection
Response", MICCAI 2019. See :mod:`weakseg_nishimura.guided_backprop` for the propagation and
:mod:`weakseg_nishimura.masks` for the graph-cut and lite variants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch
from torch import nn

from weakseg.devices import fast_bf16
from weakseg_nishimura.graphcut import edge_intensity, edge_weights
from weakseg_nishimura.guided_backprop import (
    assign_by_max_response,
    blur_responses,
    guided_responses,
    normalise_responses,
    output_regions,
)
from weakseg_nishimura.masks import GraphCutParams, label_cells_graphcut, label_cells_lite, labels_to_instances
from weakseg_nishimura.peaks import find_peaks

if TYPE_CHECKING:  # pragma: no cover
    from weakseg.nn.instances import Instances
    from weakseg_nishimura.plugin import NishimuraConfig


@attrs.define
class Propagation:
    """Intermediate results for one image (for panels, tests and debugging)."""

    heatmap: torch.Tensor  # (H, W) in [0, 1]
    locations: torch.Tensor  # (K, 2) peaks, (y, x)
    heights: torch.Tensor  # (K,)
    maps: torch.Tensor  # (K, wh, ww) normalised responses
    origins: np.ndarray  # (K, 2) window top-left corners
    best: np.ndarray  # (H, W) best normalised response
    owner: np.ndarray  # (H, W) peak index with the best response, -1 = none
    labels: np.ndarray  # (H, W) int32, label k + 1 = peak k


class NishimuraPrincipal(nn.Module):
    """``predict(image (B, C, H, W) standardised) -> list[Instances]``; scores are peak heights."""

    def __init__(self, unet: nn.Module, config: NishimuraConfig) -> None:
        super().__init__()
        self.unet = unet
        self.config = config

    @torch.no_grad()
    def heatmap(self, image: torch.Tensor) -> torch.Tensor:
        """Predicted cell-likelihood maps (B, H, W) in [0, 1]."""
        was_training = self.unet.training
        self.unet.eval()
        try:
            return torch.sigmoid(self.unet(image.float()))[:, 0]
        finally:
            self.unet.train(was_training)

    def backprop_bf16(self, device: torch.device) -> bool:
        """Whether the guided backpropagation runs in bfloat16 on ``device`` (``backprop_precision``)."""
        precision = self.config.backprop_precision
        return precision == "bf16" or (precision == "auto" and fast_bf16(device))

    def propagate(self, image: torch.Tensor) -> Propagation:
        """The whole pipeline for one standardised image (C, H, W)."""
        cfg = self.config
        image = image.float()
        h, w = image.shape[-2:]
        heat = self.heatmap(image[None])[0]
        locations, heights = find_peaks(heat, cfg.peak_threshold, cfg.peak_min_distance)
        locations, heights = locations[: cfg.max_peaks], heights[: cfg.max_peaks]
        regions = output_regions(locations, (h, w), cfg.region_radius * cfg.sigma)
        maps, origins = guided_responses(
            self.unet, image, locations, regions, window=cfg.resolved_window(), batch_size=cfg.peak_batch,
            sign=cfg.response_sign, bf16=self.backprop_bf16(image.device),
        )
        maps = normalise_responses(blur_responses(maps, cfg.response_blur), cfg.response_norm)
        best, owner = assign_by_max_response(maps, origins, (h, w))
        loc_np = locations.detach().cpu().numpy().reshape(-1, 2)
        if cfg.variant == "lite":
            labels = label_cells_lite(best, owner, loc_np, response_threshold=cfg.response_threshold)
        else:
            intensity = edge_intensity(image.detach().cpu().numpy(), cfg.modality, cfg.edge_channel)
            edges = edge_weights(intensity, cfg.edge_weights, cfg.edge_beta, cfg.edge_smooth)
            params = GraphCutParams(
                fg_seed_threshold=cfg.fg_seed_threshold,
                bg_seed_threshold=cfg.bg_seed_threshold,
                empty_threshold=cfg.empty_threshold,
                min_seed_area=cfg.min_seed_area,
                pairwise_weight=cfg.pairwise_weight,
                bias=cfg.unary_bias,
                margin=cfg.graphcut_margin,
                smooth=cfg.smooth,
            )
            labels = label_cells_graphcut(
                best, owner, loc_np, edges, response_threshold=cfg.response_threshold, params=params
            )
        return Propagation(heat, locations, heights, maps, origins, best, owner, labels)

    def predict(self, image: torch.Tensor) -> list[Instances]:
        """One ``Instances`` per image of the batch, in input-pixel coordinates."""
        out = []
        for b in range(image.shape[0]):
            prop = self.propagate(image[b])
            out.append(labels_to_instances(prop.labels, prop.locations, prop.heights, size=self.config.mask_size))
        return out
