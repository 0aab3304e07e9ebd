"""The CKS collaborator: a deliberately weak pixel-level model (foreground + cell border).

Yu, "Point-supervised Single-cell Segmentation via Collaborative Knowledge Sharing", Sec. III-B:
the foreground map M_c comes from a small U-Net (16/32/64 channels, two down-scalings) and the
border map B_c from a three-layer CNN (32, 32, head). The collaborator sees the original image
channels and can have one output channel per group (cell line); the channel is picked by the
image's group index. Its low capacity is the point (Table VII): it regularises the principal model.

Normalisation is a per-channel instance norm with a learned bias and no scale (GroupNorm with one
channel per group), as in the reference implementation (>= 0.8, where the norm is taken over (H, W)
of each image). The reference activation is ReLU (``activation="relu"``). weakseg's default is a
leaky ReLU (slope 0.1): with ReLU the foreground net of a joint CKS run can end with every decoder
channel at zero over the cells, so its output there is pinned at sigmoid(head bias) ~ 0.5 and no
gradient reaches the layers below (measured on Usiigaci and Kromp, README "Results on real
data"); the collaborator then never tells the principal model that the cells are foreground.

Table VII variants: ``a1`` is the default U-Net; ``a2``/``a3`` are deeper U-Nets (every U-Net
starts at 16 channels and doubles its width at each down-scaling, Fig. 6); ``b1`` is the default
border CNN, ``b2`` a U-Net for the border. Fig. 6 is not reproduced in the paper's text, so the
depths used here are an assumption written down in :data:`VARIANTS`: a2 has three down-scalings
(16..128), a3 four (16..256), b2 the a1 shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Table VII / Fig. 6 of the paper: name -> (kind, channel widths).
VARIANTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "a1": ("unet", (16, 32, 64)),
    "a2": ("unet", (16, 32, 64, 128)),
    "a3": ("unet", (16, 32, 64, 128, 256)),
    "b1": ("cnn", (32, 32)),
    "b2": ("unet", (16, 32, 64)),
}


class BiasOnlyInstanceNorm(nn.Module):
    """Per-channel normalisation over (H, W) of each image with a learned bias and no scale."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        # a fixed unit scale: group_norm's backward fails for bf16 inputs when weight is None (torch 2.x)
        self.register_buffer("scale", torch.ones(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.channels, self.scale, self.bias, self.eps)


#: Activations a collaborator can use (recipe key ``collaborator.activation``).
ACTIVATIONS = ("leaky_relu", "relu", "gelu")

#: Negative slope of the ``leaky_relu`` activation.
LEAKY_SLOPE = 0.1


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown collaborator activation {name!r} (use one of {', '.join(ACTIVATIONS)})")


def conv_norm_act(
    in_channels: int, out_channels: int, stride: int = 1, activation: str = "leaky_relu"
) -> nn.Sequential:
    """3x3 conv (no bias: the norm's bias replaces it) -> bias-only instance norm -> activation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        BiasOnlyInstanceNorm(out_channels),
        make_activation(activation),
    )


class UNet(nn.Module):
    """A small U-Net: level k has ``widths[k]`` channels; level 0 is full resolution.

    Encoder level k: conv 3x3 (stride 2 for k > 0) + conv 3x3; decoder: bilinear resize to the
    skip's size, concatenate, two convs with the skip's width; head: 3x3 conv with bias.
    """

    def __init__(
        self, in_channels: int, widths: Sequence[int], out_channels: int, activation: str = "leaky_relu"
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths:
            raise ValueError("a U-Net needs at least one level")
        self.widths = widths
        self.down = nn.ModuleList()
        prev = in_channels
        for k, width in enumerate(widths):
            self.down.append(
                nn.Sequential(
                    conv_norm_act(prev, width, stride=1 if k == 0 else 2, activation=activation),
                    conv_norm_act(width, width, activation=activation),
                )
            )
            prev = width
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(
                nn.Sequential(
                    conv_norm_act(prev + width, width, activation=activation),
                    conv_norm_act(width, width, activation=activation),
                )
            )
            prev = width
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
        skips.pop()
        for level in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        return self.head(x)


class ConvStack(nn.Module):
    """A plain CNN: one conv-norm-activation layer per entry of ``widths`` (stride 1), then a 3x3 head."""

    def __init__(
        self, in_channels: int, widths: Sequence[int], out_channels: int, activation: str = "leaky_relu"
    ) -> None:
        super().__init__()
        layers = []
        prev = in_channels
        for width in widths:
            layers.append(conv_norm_act(prev, int(width), activation=activation))
            prev = int(width)
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(prev, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_net(
    kind: str, in_channels: int, widths: Sequence[int], out_channels: int, activation: str = "leaky_relu"
) -> nn.Module:
    """A ``unet`` or a ``cnn`` of the given widths."""
    if kind == "unet":
        return UNet(in_channels, widths, out_channels, activation)
    if kind == "cnn":
        return ConvStack(in_channels, widths, out_channels, activation)
    raise ValueError(f"unknown collaborator net kind {kind!r} (use 'unet' or 'cnn')")


class CollaboratorOutput(NamedTuple):
    """Logits of the collaborator for each image's own group channel, (B, H, W) each."""

    foreground: torch.Tensor
    border: torch.Tensor


class Collaborator(nn.Module):
    """Foreground net + border net; ``forward(image, group)`` -> :class:`CollaboratorOutput` (logits).

    With ``n_outputs > 1`` each net has one output channel per group and image b reads channel
    ``group[b]``; with one output all groups share it.
    """

    def __init__(self, foreground: nn.Module, border: nn.Module, n_outputs: int) -> None:
        super().__init__()
        self.foreground = foreground
        self.border = border
        self.n_outputs = n_outputs

    def _select(self, logits: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
        if self.n_outputs == 1:
            return logits[:, 0]
        if group is None:
            group = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        group = group.to(device=logits.device, dtype=torch.long).clamp(0, self.n_outputs - 1)
        index = group.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:])
        return logits.gather(1, index)[:, 0]

    def forward(self, image: torch.Tensor, group: torch.Tensor | None = None) -> CollaboratorOutput:
        return CollaboratorOutput(
            foreground=self._select(self.foreground(image), group),
            border=self._select(self.border(image), group),
        )


def build_collaborator(
    in_channels: int,
    n_groups: int,
    *,
    foreground: str = "a1",
    border: str = "b1",
    foreground_widths: Sequence[int] | None = None,
    border_widths: Sequence[int] | None = None,
    per_group: bool = True,
    activation: str = "leaky_relu",
) -> Collaborator:
    """Build a collaborator from Table VII variant names, optionally with explicit widths."""
    n_out = max(int(n_groups), 1) if per_group else 1
    fg_kind, fg_widths = VARIANTS[foreground]
    bd_kind, bd_widths = VARIANTS[border]
    fg_net = make_net(fg_kind, in_channels, foreground_widths or fg_widths, n_out, activation)
    bd_net = make_net(bd_kind, in_channels, border_widths or bd_widths, n_out, activation)
    return Collaborator(fg_net, bd_net, n_out)
