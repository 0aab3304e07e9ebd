"""The detection U-Net: paper widths, any input size."""

from __future__ import annotations

import torch
from torch import nn
from weakseg_nishimura.unet import UNet


def test_default_widths_follow_the_paper():
    net = UNet(1)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    encoder_widths = [net.inc[0].out_channels] + [block[0].out_channels for block in net.down]
    assert encoder_widths == [64, 128, 256, 512, 512]
    assert convs[-1].out_channels == 1 and convs[-1].kernel_size == (1, 1)
    assert all(not m.inplace for m in net.modules() if isinstance(m, nn.ReLU))


def test_any_input_size_gives_same_size_output():
    net = UNet(2, base=4, depth=3).eval()
    for h, w in [(16, 16), (37, 50), (9, 70)]:
        assert net(torch.randn(1, 2, h, w)).shape == (1, 1, h, w)
