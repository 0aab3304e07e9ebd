"""Guided backpropagation: the backward rule, module swapping, and responses on a tiny network."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from weakseg_nishimura.guided_backprop import (
    GuidedReLU,
    GuidedReLUFunction,
    assign_by_max_response,
    guided_responses,
    normalise_responses,
    output_regions,
)
from weakseg_nishimura.unet import UNet

PEAKS = torch.tensor([[16.5, 16.5], [50.5, 48.5]])


def tiny_net() -> UNet:
    torch.manual_seed(0)
    net = UNet(1, base=4, depth=2)
    # Non-trivial batch-norm statistics, so that eval mode matters.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 1, 64, 64))
    return net.eval()


def test_guided_relu_passes_only_positive_gradients_at_positive_inputs():
    x = torch.tensor([-1.0, 2.0, 3.0, 0.0], requires_grad=True)
    y = GuidedReLUFunction.apply(x)
    assert y.tolist() == [0.0, 2.0, 3.0, 0.0]
    (grad,) = torch.autograd.grad(y, x, grad_outputs=torch.tensor([5.0, -1.0, 4.0, 7.0]))
    assert grad.tolist() == [0.0, 0.0, 4.0, 0.0]


def test_modules_are_restored_after_propagation():
    net = tiny_net().train()
    relus_before = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    regions = output_regions(PEAKS, (64, 64), radius=6.0)
    guided_responses(net, torch.randn(1, 64, 64), PEAKS, regions, window=None)
    assert [m for m in net.modules() if isinstance(m, nn.ReLU)] == relus_before
    assert not any(isinstance(m, GuidedReLU) for m in net.modules())
    assert net.training  # the training flag comes back


def test_output_regions_are_voronoi_cells_within_radius():
    regions = output_regions(PEAKS, (64, 64), radius=6.0)
    assert regions[16, 16] == 0 and regions[50, 48] == 1
    assert regions[16, 23] == -1  # 7 px away: outside the radius
    assert (regions == 0).sum() == (regions == 1).sum() > 100


def test_responses_are_non_negative_and_localised_near_their_peak():
    net = tiny_net()
    image = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(1))
    regions = output_regions(PEAKS, (64, 64), radius=6.0)
    maps, origins = guided_responses(net, image, PEAKS, regions, window=None, batch_size=2)
    assert maps.shape == (2, 64, 64) and origins.tolist() == [[0, 0], [0, 0]]
    assert torch.all(maps >= 0)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    for k in range(2):
        m = maps[k]
        assert m.sum() > 0
        own = torch.hypot(yy - PEAKS[k, 0], xx - PEAKS[k, 1])
        other = torch.hypot(yy - PEAKS[1 - k, 0], xx - PEAKS[1 - k, 1])
        # the response's centre of mass sits near its own peak ...
        centre = torch.stack([(m * yy).sum() / m.sum(), (m * xx).sum() / m.sum()])
        assert torch.linalg.norm(centre - PEAKS[k]) < 4.0
        # ... most of its mass is close to it, and none reaches the other peak.
        assert m[own < 16].sum() > 0.8 * m.sum()
        assert m[other < 8].sum() < 1e-6 * m.sum()


def test_guided_maps_differ_from_plain_gradients():
    net = tiny_net()
    image = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(2))
    regions = output_regions(PEAKS[:1], (64, 64), radius=6.0)
    maps, _ = guided_responses(net, image, PEAKS[:1], regions, window=None)
    x = image[None].clone().requires_grad_(True)
    out = torch.sigmoid(net(x))
    (plain,) = torch.autograd.grad(out, x, grad_outputs=torch.from_numpy(regions == 0)[None, None].float())
    assert not torch.allclose(maps[0], plain[0].sum(0).clamp(min=0))


def test_batching_and_windows_do_not_change_the_answer_near_the_peak():
    net = tiny_net()
    image = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(3))
    regions = output_regions(PEAKS, (64, 64), radius=6.0)
    one_by_one, _ = guided_responses(net, image, PEAKS, regions, window=None, batch_size=1)
    batched, _ = guided_responses(net, image, PEAKS, regions, window=None, batch_size=2)
    torch.testing.assert_close(one_by_one, batched, rtol=1e-4, atol=1e-6)
    # A 48 px window around each peak: same map shape for all, origins inside the image.
    windowed, origins = guided_responses(net, image, PEAKS, regions, window=48, batch_size=2)
    assert windowed.shape == (2, 48, 48)
    assert origins.tolist() == [[0, 0], [16, 16]]
    # Near the peak (away from the window border), the window sees enough context.
    full_near = one_by_one[1, 44:57, 42:55]
    win_near = windowed[1, 44 - 16 : 57 - 16, 42 - 16 : 55 - 16]
    assert torch.corrcoef(torch.stack([full_near.flatten(), win_near.flatten()]))[0, 1] > 0.9


def test_bf16_responses_match_fp32_and_leave_the_parameters_alone():
    net = tiny_net()
    image = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(3))
    regions = output_regions(PEAKS, (64, 64), radius=6.0)
    fp32, _ = guided_responses(net, image, PEAKS, regions, window=48, batch_size=2)
    bf16, _ = guided_responses(net, image, PEAKS, regions, window=48, batch_size=2, bf16=True)
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)  # really computed in bf16
    a, b = normalise_responses(fp32, "max"), normalise_responses(bf16, "max")
    assert (a - b).abs().sum() / a.abs().sum() < 0.05
    assert ((a > 0.05) == (b > 0.05)).float().mean() > 0.97
    assert all(p.requires_grad and p.grad is None for p in net.parameters())


def test_normalisation_and_assignment_by_maximum_response():
    maps = torch.zeros(2, 4, 4)
    maps[0, :, :2] = 2.0
    maps[0, :, 2:] = 1.0
    maps[1, :, 2:] = 0.1
    assert normalise_responses(maps, "max").amax(dim=(1, 2)).tolist() == [1.0, 1.0]
    norm = normalise_responses(maps, "max")
    best, owner = assign_by_max_response(norm, np.zeros((2, 2), np.int64), (4, 6))
    assert (owner[:, :2] == 0).all() and (owner[:, 2:4] == 1).all()  # 0.5 < 1.0 on the right half
    assert (owner[:, 4:] == -1).all() and (best[:, 4:] == 0).all()  # no map covers these pixels
