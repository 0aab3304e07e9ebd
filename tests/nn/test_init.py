"""LeCun-normal initialisation: the statistics of each layer kind, zero biases, timm trunks left alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weakseg.nn.init import TRUNCATED_STD, fan_in, lecun_normal_


def test_fan_in_counts_the_inputs_of_one_output_unit():
    assert fan_in(nn.Conv2d(8, 16, 3)) == 8 * 9
    assert fan_in(nn.Conv2d(8, 8, 7, groups=8)) == 49
    assert fan_in(nn.ConvTranspose2d(64, 1, 2, stride=2)) == 2 * 2 * 64  # torch's own rule would give 4
    assert fan_in(nn.Linear(256, 10)) == 256


@pytest.mark.parametrize(
    "layer", [nn.Conv2d(64, 128, 3), nn.ConvTranspose2d(64, 1, 2, stride=2), nn.Linear(384, 256), nn.Conv2d(1, 32, 3)]
)
def test_weights_have_variance_one_over_fan_in_and_biases_are_zero(layer):
    torch.manual_seed(0)
    lecun_normal_(layer)
    w = layer.weight.detach()
    std = 1 / math.sqrt(fan_in(layer))
    assert w.std().item() == pytest.approx(std, rel=0.15 if w.numel() < 1000 else 0.03)
    assert w.abs().max().item() <= 2 * std / TRUNCATED_STD + 1e-7  # truncated at two standard deviations
    assert abs(w.mean().item()) < 0.2 * std
    assert torch.count_nonzero(layer.bias) == 0


def test_excluded_modules_and_norms_keep_their_values():
    torch.manual_seed(0)
    trunk, head, norm = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.GroupNorm(2, 8)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    before = trunk.weight.detach().clone(), trunk.bias.detach().clone()
    lecun_normal_(nn.Sequential(trunk, norm, head), exclude=[trunk])
    assert torch.equal(trunk.weight, before[0]) and torch.equal(trunk.bias, before[1])
    assert torch.all(norm.weight == 2.0)
    assert torch.count_nonzero(head.bias) == 0
