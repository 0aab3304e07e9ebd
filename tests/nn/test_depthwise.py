"""The fast-backward depthwise convolution gives the stock convolution's outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from weakseg.nn.depthwise import FastDepthwiseConv2d, accelerate_depthwise_convs


def _pair(channels=6, k=7, bias=True):
    torch.manual_seed(0)
    ref = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=bias)
    fast = copy.deepcopy(ref)
    assert accelerate_depthwise_convs(fast) == 1
    assert isinstance(fast, FastDepthwiseConv2d)
    return ref, fast


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("k", "bias"), [(7, True), (3, False)])
def test_same_outputs_and_gradients_as_nn_conv2d(batch, channels_last, k, bias):
    ref, fast = _pair(k=k, bias=bias)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 6, 11, 9).contiguous(memory_format=fmt)
    grad = torch.randn(batch, 6, 11, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), fast(xb)
    torch.testing.assert_close(yb, ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gradients_are_close_and_float32():
    ref, fast = _pair()
    x = torch.randn(2, 6, 16, 16)
    grads = []
    for conv in (ref, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(xi)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        assert conv.weight.grad.dtype == torch.float32
        grads.append((xi.grad, conv.weight.grad, conv.bias.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=0.03, atol=0.03 * float(a.abs().max()))


def test_only_eligible_convs_are_swapped_and_state_dict_is_kept():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 7, padding=3, groups=4),  # yes
        nn.Conv2d(4, 4, 3, padding=1),  # dense
        nn.Conv2d(4, 4, 3, padding=1, stride=2, groups=4),  # strided
        nn.Conv2d(4, 4, 3, padding=0, groups=4),  # not 'same'
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert accelerate_depthwise_convs(model) == 1
    assert [type(m) is FastDepthwiseConv2d for m in model] == [True, False, False, False]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
