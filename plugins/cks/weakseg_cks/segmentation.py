"""The principal model's per-instance segmentation head.

CKS paper, Sec. III-A and Fig. 3: masks are computed only inside a fixed window around each cell
location (default 96x96 image pixels); a position encoding derived from the feature vector at the
location breaks translation invariance so that the window's output is *this* cell's mask.
Facts from the reference implementation (LACSS):

- dense part, on the stride-4 FPN map: 3 x (conv3x3 + instance norm + ReLU), then conv3x3 to 64;
- window: 24x24 feature pixels (96 / 4) whose top-left is ``floor(p / 4) - 12``; outside the map
  it reads zeros; in image pixels the crop's top-left is ``4 * (floor(p / 4) - 12)`` and crop pixel
  (a, b) is image pixel (y0 + a, x0 + b);
- learned position encoding: the raw FPN feature averaged over the 2x2 pixels with top-left
  ``floor(p / 4) - 1`` -> MLP 256-256-256 -> reshape (8, 8, 4) -> bilinear to 24x24 -> 1x1 conv to
  64; **added** to the window, then ReLU;
- ConvTranspose 2x (to 48) -> bilinear to 96 -> one logit per crop pixel.

The windows of the M real instances are gathered with index arithmetic (one advanced-indexing
gather, no loop over instances, no padded block of crops).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from weakseg_cks.detection import conv_norm_relu

#: Stride of the FPN level the segmentation head reads.
SEGMENTATION_STRIDE = 4


def window_indices(
    locations: torch.Tensor, map_shape: tuple[int, int], stride: int = SEGMENTATION_STRIDE
) -> torch.Tensor:
    """Feature pixel (iy, ix) = floor(p / stride) of each location, clipped to the map: int64 (M, 2)."""
    h, w = map_shape
    idx = torch.floor(locations.detach().float() / stride).long()
    return torch.stack([idx[:, 0].clamp(0, h - 1), idx[:, 1].clamp(0, w - 1)], 1)


def gather_windows(
    features: torch.Tensor, batch_index: torch.Tensor, top_left: torch.Tensor, size: int
) -> torch.Tensor:
    """Square windows of a (B, C, h, w) map: (M, C, size, size), zeros outside the map.

    ``top_left`` (M, 2) int64 feature pixels (may be negative or run past the map). Differentiable
    with respect to ``features``. The result is channels-last in memory.
    """
    b, c, h, w = features.shape
    m = top_left.shape[0]
    if m == 0:
        return features.new_zeros(0, c, size, size)
    nhwc = features.permute(0, 2, 3, 1)  # a view; contiguous when features are channels-last
    lo = int(max(0, -int(top_left.min())))
    hi_y = int(max(0, int(top_left[:, 0].max()) + size - h))
    hi_x = int(max(0, int(top_left[:, 1].max()) + size - w))
    pad = max(lo, hi_y, hi_x)
    if pad:
        nhwc = F.pad(nhwc, (0, 0, pad, pad, pad, pad))
    ar = torch.arange(size, device=features.device)
    rows = (top_left[:, 0:1] + pad + ar)[:, :, None]  # (M, S, 1)
    cols = (top_left[:, 1:2] + pad + ar)[:, None, :]  # (M, 1, S)
    patches = nhwc[batch_index[:, None, None], rows, cols]  # (M, S, S, C)
    return patches.permute(0, 3, 1, 2)


def cosine_encoding(size: int, channels_per_axis: int = 8) -> torch.Tensor:
    """Fixed Transformer-style sinusoidal encoding of the offset from the window centre: (2 * cpa, S, S).

    Used by the paper's "constant encoding" ablation (Table II) instead of the learned encoding.
    """
    pos = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2  # feature pixels from the centre
    freqs = 1.0 / (10000 ** (torch.arange(0, channels_per_axis, 2, dtype=torch.float32) / channels_per_axis))
    angles = pos[:, None] * freqs[None, :]  # (S, cpa/2)
    enc_1d = torch.cat([torch.sin(angles), torch.cos(angles)], 1)  # (S, cpa)
    enc_y = enc_1d.T[:, :, None].expand(-1, size, size)
    enc_x = enc_1d.T[:, None, :].expand(-1, size, size)
    return torch.cat([enc_y, enc_x], 0).contiguous()


class SegmentationHead(nn.Module):
    """Dense tower on the stride-4 map + per-instance window decoding (see module docstring)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        n_layers: int = 3,
        instance_channels: int = 64,
        crop_size: int = 96,
        position_encoding: str = "learned",
        encoder_hidden: tuple[int, ...] = (256, 256),
        encoder_dims: tuple[int, int, int] = (8, 8, 4),
    ) -> None:
        super().__init__()
        if crop_size % (2 * SEGMENTATION_STRIDE):
            raise ValueError(f"crop_size must be a multiple of {2 * SEGMENTATION_STRIDE}, got {crop_size}")
        layers: list[nn.Module] = []
        for k in range(n_layers):
            layers += conv_norm_relu(in_channels if k == 0 else channels, channels)
        layers.append(nn.Conv2d(channels if n_layers else in_channels, instance_channels, 3, padding=1, bias=False))
        self.tower = nn.Sequential(*layers)
        self.crop_size = crop_size
        self.window = crop_size // SEGMENTATION_STRIDE
        self.position_encoding = position_encoding
        self.encoder_dims = tuple(encoder_dims)
        if position_encoding == "learned":
            dims = [in_channels, *encoder_hidden, math.prod(encoder_dims)]
            mlp: list[nn.Module] = []
            for k in range(len(dims) - 1):
                mlp.append(nn.Linear(dims[k], dims[k + 1]))
                if k < len(dims) - 2:
                    mlp.append(nn.ReLU(inplace=True))
            self.encoder = nn.Sequential(*mlp)
            self.encoder_proj = nn.Conv2d(encoder_dims[2], instance_channels, 1, bias=False)
        elif position_encoding == "cosine":
            self.register_buffer("cosine", cosine_encoding(self.window), persistent=False)  # (E, S/4, S/4)
            self.encoder_proj = nn.Conv2d(self.cosine.shape[0], instance_channels, 1, bias=False)
        else:
            raise ValueError(f"position_encoding must be 'learned' or 'cosine', got {position_encoding!r}")
        self.upsample = nn.ConvTranspose2d(instance_channels, 1, 2, stride=2)

    def dense(self, feature: torch.Tensor) -> torch.Tensor:
        """Stride-4 FPN map (B, C, h, w) -> instance features (B, instance_channels, h, w)."""
        return self.tower(feature)

    def encoding(self, raw: torch.Tensor, batch_index: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """The position code before its 1x1 projection: (M, E, S/4, S/4), or (E, S/4, S/4) when fixed."""
        if self.position_encoding == "cosine":
            return self.cosine
        m = cell.shape[0]
        h, w = raw.shape[-2:]
        nhwc = raw.permute(0, 2, 3, 1)
        ys = torch.stack([cell[:, 0] - 1, cell[:, 0]], 1).clamp(0, h - 1)  # (M, 2)
        xs = torch.stack([cell[:, 1] - 1, cell[:, 1]], 1).clamp(0, w - 1)
        vec = nhwc[batch_index[:, None, None], ys[:, :, None], xs[:, None, :]].mean((1, 2))  # (M, C)
        code = self.encoder(vec)
        gy, gx, gc = self.encoder_dims
        code = code.reshape(m, gy, gx, gc).permute(0, 3, 1, 2)
        return F.interpolate(code, size=(self.window, self.window), mode="bilinear", align_corners=False)

    def decode(self, patches: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Window features (M, C, S/4, S/4) and position code -> mask logits (M, S, S).

        Computes ``relu(patches + proj(code))``, the 2x2 stride-2 transposed convolution and the
        bilinear resize to S, with the per-pixel linear maps written as matrix products on the
        channels-last layout (the same parameters as ``encoder_proj`` and ``upsample``; no
        intermediate 64-channel tensors besides the sum).
        """
        m, c, s, _ = patches.shape
        x = patches.permute(0, 2, 3, 1).reshape(m * s * s, c)
        proj = self.encoder_proj.weight.reshape(c, -1)  # (C, E)
        if code.dim() == 3:  # a fixed code shared by all windows
            pe = code.permute(1, 2, 0).reshape(s * s, -1).to(x.dtype) @ proj.t().to(x.dtype)  # (s*s, C)
            h = (x.view(m, s * s, c) + pe).view(m * s * s, c)
        else:
            flat_code = code.permute(0, 2, 3, 1).reshape(m * s * s, -1)
            h = torch.addmm(x, flat_code, proj.t())
        h = F.relu(h, inplace=True)
        up = self.upsample.weight.reshape(c, 4)  # (C, 1, 2, 2) -> (C, [a, b])
        y = torch.addmm(self.upsample.bias.expand(4), h, up)  # (M*s*s, 4)
        y = y.view(m, s, s, 2, 2).permute(0, 1, 3, 2, 4).reshape(m, 1, 2 * s, 2 * s)
        y = F.interpolate(y, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False)
        return y[:, 0]

    def crops(
        self, dense: torch.Tensor, raw: torch.Tensor, locations: torch.Tensor, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (M, S, S) and crop origins (M, 2) int64 (image pixels) for M locations.

        ``dense`` is :meth:`dense` of ``raw`` (the stride-4 FPN map, used by the encoder).
        """
        half = self.window // 2
        cell = window_indices(locations, tuple(dense.shape[-2:]))
        top_left = cell - half
        patches = gather_windows(dense, batch_index, top_left, self.window)
        logits = self.decode(patches, self.encoding(raw, batch_index, cell))
        return logits, top_left * SEGMENTATION_STRIDE
