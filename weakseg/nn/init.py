"""LeCun-normal initialisation, as the CKS reference implementation (flax) starts every layer it defines.

flax's default for dense and convolution kernels is ``lecun_normal``: a normal distribution truncated at two
standard deviations and rescaled so that the variance is ``1 / fan_in``; biases start at zero. torch's
defaults differ in three ways that matter for CKS (Yu, IEEE TMI 2023; measured on its reference code):

- kaiming-uniform with ``a = sqrt(5)`` gives ``std = 1 / sqrt(3 fan_in)``, 0.58x LeCun's;
- biases are random (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) instead of zero;
- a transposed convolution's fan-in is computed from its *output* channels (the weight is
  ``(in, out / groups, kh, kw)``): for the segmentation head's 64 -> 1 channel, 2 x 2 upsampling torch
  uses fan-in 4 where the reference uses ``2 * 2 * 64 = 256``, so the instance logits start 4.6x wider.

:func:`lecun_normal_` re-initialises the convolutions and linear layers of a module (normalisation layers
keep scale 1 and bias 0, as in both frameworks), skipping sub-modules given in ``exclude`` (a timm trunk,
which has its own initialisation scheme).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

#: Standard deviation of a unit normal truncated to [-2, 2]; dividing by it restores unit variance.
TRUNCATED_STD = 0.87962566103423978

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fan_in(layer: nn.Module) -> int:
    """Inputs that reach one output unit: ``C_in / groups * prod(kernel)`` for (transposed) convolutions,
    ``in_features`` for linear layers."""
    if isinstance(layer, _CONVS + _TRANSPOSED):
        return layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return layer.in_features
    raise TypeError(f"no fan-in for {type(layer).__name__}")


@torch.no_grad()
def lecun_normal_(module: nn.Module, exclude: Iterable[nn.Module] = ()) -> nn.Module:
    """Give every convolution, transposed convolution and linear layer of ``module`` (outside ``exclude``)
    truncated-normal weights of variance ``1 / fan_in`` and zero biases; returns ``module``."""
    skipped = {id(p) for m in exclude for p in m.parameters()}
    for layer in module.modules():
        if not isinstance(layer, _CONVS + _TRANSPOSED + (nn.Linear,)) or id(layer.weight) in skipped:
            continue
        std = 1.0 / math.sqrt(fan_in(layer)) / TRUNCATED_STD
        nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
        if layer.bias is not None:
            layer.bias.zero_()
    return module
