"""The CKS collaborator: shapes, per-group channels, norm, sizes of the Table VII variants."""

from __future__ import annotations

import pytest
import torch
from weakseg_cks.collaborator import BiasOnlyInstanceNorm, ConvStack, UNet, build_collaborator

from weakseg.recipe import CollaboratorSpec


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("shape", [(37, 53), (16, 16), (5, 9)])
def test_output_shapes_follow_odd_input_sizes(shape):
    collab = build_collaborator(2, 3)
    out = collab(torch.randn(2, 2, *shape), torch.tensor([0, 2]))
    assert out.foreground.shape == (2, *shape)
    assert out.border.shape == (2, *shape)


def test_group_index_picks_that_groups_output_channel():
    torch.manual_seed(0)
    collab = build_collaborator(1, 4).eval()
    image = torch.randn(3, 1, 24, 20)
    group = torch.tensor([3, 0, 2])
    out = collab(image, group)
    full_fg = collab.foreground(image)
    full_bd = collab.border(image)
    for b, g in enumerate(group.tolist()):
        torch.testing.assert_close(out.foreground[b], full_fg[b, g])
        torch.testing.assert_close(out.border[b], full_bd[b, g])


def test_single_output_is_shared_by_all_groups():
    collab = build_collaborator(1, 5, per_group=False)
    assert collab.foreground.head.out_channels == 1
    image = torch.randn(1, 1, 16, 16)
    a = collab(image, torch.tensor([0])).foreground
    b = collab(image, torch.tensor([4])).foreground
    torch.testing.assert_close(a, b)


def test_default_size_matches_the_reference():
    # notes sec. 2: ~0.128 M parameters for one output channel (1-channel image)
    collab = build_collaborator(1, 1)
    assert abs(n_params(collab) - 128_000) < 1_000
    # U-Net 16/32/64: two stride-2 downscales; border CNN: two hidden 32-channel layers + head
    unet = collab.foreground
    assert isinstance(unet, UNet) and unet.widths == (16, 32, 64)
    strides = [m.stride for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides.count((2, 2)) == 2
    assert isinstance(collab.border, ConvStack)
    convs = [m for m in collab.border.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_instance_norm_is_per_channel_with_bias_only():
    norm = BiasOnlyInstanceNorm(3)
    assert [name for name, _ in norm.named_parameters()] == ["bias"]
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.0, 1.0, -2.0]))
    x = torch.randn(2, 3, 7, 9) * 5 + 3
    y = norm(x)
    torch.testing.assert_close(y.mean((2, 3)), norm.bias.detach().expand(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((2, 3), unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("name", "fg_widths", "border_kind"),
    [
        ("cks", (16, 32, 64), ConvStack),
        ("cks_a2_b1", (16, 32, 64, 128), ConvStack),
        ("cks_a3_b1", (16, 32, 64, 128, 256), ConvStack),
        ("cks_a1_b2", (16, 32, 64), UNet),
        ("cks_a3_b2", (16, 32, 64, 128, 256), UNet),
    ],
)
def test_registered_variants_build_through_the_registry(name, fg_widths, border_kind):
    collab = CollaboratorSpec.of(name).build(in_channels=1, n_groups=2)
    assert collab.foreground.widths == fg_widths
    assert isinstance(collab.border, border_kind)
    out = collab(torch.randn(1, 1, 40, 36), torch.tensor([1]))
    assert out.foreground.shape == out.border.shape == (1, 40, 36)


def test_larger_variants_are_larger():
    sizes = [
        n_params(CollaboratorSpec.of(n).build(in_channels=1, n_groups=1)) for n in ("cks", "cks_a2_b1", "cks_a3_b1")
    ]
    assert sizes[0] < sizes[1] < sizes[2]


def test_explicit_widths_override_the_variant():
    collab = CollaboratorSpec.of("cks", foreground_widths=[8, 16], border_widths=[4]).build(in_channels=1, n_groups=1)
    assert collab.foreground.widths == (8, 16)
    assert [m.out_channels for m in collab.border.modules() if isinstance(m, torch.nn.Conv2d)] == [4, 1]


def test_bad_widths_are_a_recipe_error():
    from weakseg.errors import RecipeError
    from weakseg.recipe import structure

    with pytest.raises(RecipeError, match="widths"):
        structure({"type": "cks", "foreground_widths": [16, 0]}, CollaboratorSpec)
    with pytest.raises(RecipeError, match="a4"):
        structure({"type": "cks", "foreground": "a4"}, CollaboratorSpec)


def test_trains_under_bf16_autocast():
    collab = build_collaborator(1, 2)
    image = torch.randn(1, 1, 20, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = collab(image, torch.tensor([1]))
    (out.foreground.float().sum() + out.border.float().sum()).backward()
    assert all(p.grad is not None for p in collab.parameters())


@pytest.mark.parametrize(("activation", "module"), [("leaky_relu", torch.nn.LeakyReLU), ("relu", torch.nn.ReLU)])
def test_activation_is_a_recipe_key_with_leaky_relu_default(activation, module):
    kwargs = {} if activation == "leaky_relu" else {"activation": activation}
    collab = CollaboratorSpec.of("cks", **kwargs).build(in_channels=1, n_groups=1)
    acts = [m for m in collab.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU))]
    assert acts and all(type(m) is module for m in acts)


def test_unknown_activation_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown collaborator activation 'tanh'"):
        build_collaborator(1, 1, activation="tanh")


@pytest.mark.parametrize(("activation", "gradient_reaches_input_layer"), [("relu", False), ("leaky_relu", True)])
def test_dead_decoder_channels_block_learning_only_with_relu(activation, gradient_reaches_input_layer):
    # the failure the leaky default avoids: when every last-decoder channel is negative before the
    # activation, a ReLU net's output is its head bias and no gradient reaches the layers below
    torch.manual_seed(0)
    net = UNet(1, (4, 8), 1, activation=activation)
    with torch.no_grad():
        net.up[-1][-1][1].bias.fill_(-100.0)  # the norm of the last decoder layer
    net(torch.randn(1, 1, 16, 16)).sum().backward()
    first_conv = net.down[0][0][0].weight
    assert (first_conv.grad.abs().sum() > 0).item() is gradient_reaches_input_layer
