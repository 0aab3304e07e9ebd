"""The detection network of Nishimura-1: a plain U-Net regressing a cell-likelihood heatmap.

Nishimura, Ker & Bise, "Weakly Supervised Cell Instance Segmentation by Propagating from Detection
Response", MICCAI 2019: the detector is the classic U-Net (blocks of (3x3 conv -> BN -> ReLU) x2,
channels 64-128-256-512-512, four 2x2 max-pool downsamplings, bilinear upsampling plus skip
concatenation, a 1x1 output conv followed by a sigmoid). Width and depth are configurable here.

Every non-linearity is an ``nn.ReLU`` module (never ``F.relu``, never in place) so that guided
backpropagation (:mod:`weakseg_nishimura.guided_backprop`) can swap them for guided ReLUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=False),
        )


class UNet(nn.Module):
    """U-Net returning heatmap *logits* (B, out_channels, H, W) for images of any size.

    ``base`` is the width of the first level; level i has ``min(base * 2**i, max_width)`` channels
    and the bottleneck repeats the deepest width (the original: base 64, depth 4, 64-128-256-512-512).
    Inputs whose sides are not multiples of ``2**depth`` are zero-padded (bottom/right) and the
    output is cropped back, so the output always matches the input size.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, base: int = 64, depth: int = 4,
                 max_width: int = 512) -> None:
        super().__init__()
        if depth < 1 or base < 1:
            raise ValueError(f"UNet needs depth >= 1 and base >= 1, got depth={depth}, base={base}")
        widths = [min(base * 2**i, max_width) for i in range(depth)]
        self.depth = depth
        self.inc = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            DoubleConv(widths[i], widths[i + 1] if i + 1 < depth else widths[-1]) for i in range(depth)
        )
        # Decoder level i (deepest first) merges the upsampled map with skip i.
        self.up = nn.ModuleList()
        current = widths[-1]
        for i in reversed(range(depth)):
            out = widths[i - 1] if i > 0 else widths[0]
            self.up.append(DoubleConv(current + widths[i], out))
            current = out
        self.outc = nn.Conv2d(current, out_channels, 1)

    @property
    def multiple(self) -> int:
        """Input sides are padded internally to a multiple of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for block in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            y = block(torch.cat([skip, y], dim=1))
        return self.outc(y)[..., :h, :w]
