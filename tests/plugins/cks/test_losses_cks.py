"""CKS losses against hand computations on tiny tensors, naive loop references, and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
from weakseg_cks.losses import (
    BorderConsistency,
    CollapsePenalty,
    ForegroundConsistency,
    InstanceConsistency,
    SupervisedInstanceLoss,
    crop_geometry,
    gaussian_prior,
    mask_centroids,
    merged_principal_map,
    principal_border_map,
)


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def geom_of(origins, batch_index, shape, n_images, crop):
    return crop_geometry(torch.tensor(origins), torch.tensor(batch_index), shape, n_images, crop)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------


def test_crop_geometry_maps_crop_pixels_to_flat_batch_pixels():
    g = geom_of([[-1, -1], [2, 3]], [0, 1], (4, 5), 2, 3)
    # crop 0 at (-1, -1): only pixels with image y, x >= 0 are inside
    assert g.inside[0].tolist() == [[False, False, False], [False, True, True], [False, True, True]]
    assert g.flat_index[0, 1, 1].item() == 0 and g.flat_index[0, 2, 2].item() == 1 * 5 + 1
    assert g.flat_index[0, 0, 0].item() == g.n_pixels  # dump slot
    # crop 1 in image 1 at (2, 3): pixel (a, b) -> image 1, (2 + a, 3 + b); rows >= 4, cols >= 5 outside
    assert g.flat_index[1, 0, 0].item() == 20 + 2 * 5 + 3
    assert g.inside[1].tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert g.counts().tolist() == [1.0, 1.0]


def test_gaussian_prior_by_hand():
    p = gaussian_prior(3, torch.tensor([2.0]), 2.0)[0]
    # centre index 1: r^2 = 0 (centre), 1 (edges), 2 (corners); offset = pi exp(-r^2 / (2 sigma^2))
    assert p[1, 1].item() == pytest.approx(2.0)
    assert p[0, 1].item() == pytest.approx(2.0 * math.exp(-1 / 8))
    assert p[2, 2].item() == pytest.approx(2.0 * math.exp(-2 / 8))
    assert gaussian_prior(3, torch.tensor([2.0]), 0.0).abs().max().item() == 0.0  # pi = 0: no prior


# ---------------------------------------------------------------------------------------------
# L_M
# ---------------------------------------------------------------------------------------------


def _two_crops():
    # image 2 x 4; crop size 2; crop A at (0, 0), crop B at (0, 1); column 3 is uncovered
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0]], [[3.0, -2.0], [0.0, 0.5]]])
    geom = geom_of([[0, 0], [0, 1]], [0, 0], (2, 4), 1, 2)
    return logits, geom


def test_merged_map_takes_the_max_logit_and_zero_where_uncovered():
    logits, geom = _two_crops()
    g = merged_principal_map(logits, geom, None)[0]
    expected = [[sig(0.0), sig(3.0), sig(-2.0), 0.0], [sig(2.0), sig(0.0), sig(0.5), 0.0]]
    torch.testing.assert_close(g, torch.tensor(expected))


def test_merged_map_adds_the_prior_before_the_max():
    logits, geom = _two_crops()
    prior = torch.tensor([[[0.0, 0.0], [0.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    g = merged_principal_map(logits, geom, prior)[0]
    assert g[1, 1].item() == pytest.approx(sig(4.0))  # A: -1 + 5 beats B: 0


def test_linear_consistency_by_hand():
    logits, geom = _two_crops()
    fg = torch.tensor([[[0.0, 1.0, -1.0, 2.0], [0.0, -3.0, 0.0, 0.0]]])
    loss = ForegroundConsistency("linear")(fg, logits, geom)
    gs = [sig(0.0), sig(3.0), sig(-2.0), 0.0, sig(2.0), sig(0.0), sig(0.5), 0.0]
    fs = [sig(v) for v in fg.flatten().tolist()]
    expected = sum(g * (1 - f) + (1 - g) * f for g, f in zip(gs, fs, strict=True)) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_consistency_uses_hard_labels():
    logits, geom = _two_crops()
    fg = torch.tensor([[[0.0, 1.0, -1.0, 2.0], [0.0, -3.0, 0.0, 0.0]]])
    loss = ForegroundConsistency("cross_entropy")(fg, logits, geom)
    labels = [1, 1, 0, 0, 1, 1, 1, 0]  # g >= 0.5 (sigma(0) = 0.5 counts as foreground)
    fs = [sig(v) for v in fg.flatten().tolist()]
    expected = -sum(math.log(f) if t else math.log(1 - f) for t, f in zip(labels, fs, strict=True)) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# L_S
# ---------------------------------------------------------------------------------------------


def _single_pixel_crops():
    # image 1 x 2, crop size 1: A and B on pixel (0, 0), C on pixel (0, 1)
    logits = torch.tensor([math.log(3.0), 0.0, 0.0]).view(3, 1, 1)  # y = 0.75, 0.5, 0.5
    geom = geom_of([[0, 0], [0, 0], [0, 1]], [0, 0, 0], (1, 2), 1, 1)
    fg = torch.tensor([[[math.log(1 / 3), 0.0]]])  # f = 0.25, 0.5
    return logits, geom, fg


def test_instance_loss_soft_by_hand():
    logits, geom, fg = _single_pixel_crops()
    loss = InstanceConsistency()(logits, geom, fg, hard=False)
    a = (1 - 0.25) * 0.75 + 0.25 * 0.25 + 0.75 * 0.5
    b = (1 - 0.25) * 0.5 + 0.25 * 0.5 + 0.5 * 0.75
    c = 0.5 * 0.5 + 0.5 * 0.5
    assert loss.item() == pytest.approx((a + b + c) / 3, rel=1e-6)


def test_instance_loss_hard_and_log_overlap_by_hand():
    logits, geom, fg = _single_pixel_crops()
    loss = InstanceConsistency()(logits, geom, fg, hard=True)
    # f_hat = [0, 1]; overlap y_i * softplus(l_j)
    a = 0.75 + 0.75 * math.log(2.0)
    b = 0.5 + 0.5 * math.log(4.0)
    c = 1 - 0.5
    assert loss.item() == pytest.approx((a + b + c) / 3, rel=1e-6)


def test_instance_loss_crop_pixels_outside_the_image_count_as_background():
    # image 1 x 1; crop size 2 at (0, -1): only crop pixel (0, 1) is inside
    logits = torch.zeros(1, 2, 2)
    geom = geom_of([[0, -1]], [0], (1, 1), 1, 2)
    fg = torch.full((1, 1, 1), 10.0)  # f ~ 1 inside
    loss = InstanceConsistency()(logits, geom, fg)
    f = sig(10.0)
    inside = (1 - f) * 0.5 + f * 0.5
    outside = 0.5  # f = 0 -> (1 - 0) * y, no overlap
    assert loss.item() == pytest.approx((inside + 3 * outside) / 4, rel=1e-6)


def test_instance_cross_entropy_variant_by_hand():
    logits, geom, fg = _single_pixel_crops()
    loss = InstanceConsistency(cross_entropy=True)(logits, geom, fg)
    a = -math.log(1 - 0.75) + 0.75 * 0.5
    b = -math.log(1 - 0.5) + 0.5 * 0.75
    c = -math.log(0.5)
    assert loss.item() == pytest.approx((a + b + c) / 3, rel=1e-6)


def naive_instance_loss(logits, origins, batch_index, fg_prob, hard):
    """A plain loop over images, instances and pixels, written from the notes' formula."""
    b_count, h, w = fg_prob.shape
    y = torch.sigmoid(logits)
    per_image = []
    for b in range(b_count):
        idx = [i for i in range(len(origins)) if batch_index[i] == b]
        total = 0.0
        for i in idx:
            acc = 0.0
            for a in range(logits.shape[1]):
                for c in range(logits.shape[2]):
                    yy, xx = origins[i][0] + a, origins[i][1] + c
                    inside = 0 <= yy < h and 0 <= xx < w
                    f = fg_prob[b, yy, xx].item() if inside else 0.0
                    if hard:
                        f = float(f >= 0.5)
                    yi = y[i, a, c].item()
                    acc += (1 - f) * yi + f * (1 - yi)
                    if inside:
                        for j in idx:
                            if j == i:
                                continue
                            aj, cj = yy - origins[j][0], xx - origins[j][1]
                            if 0 <= aj < logits.shape[1] and 0 <= cj < logits.shape[2]:
                                o = y[j, aj, cj].item() if not hard else math.log1p(math.exp(logits[j, aj, cj].item()))
                                acc += yi * o
            total += acc / logits[0].numel()
        per_image.append(total / (len(idx) + torch.finfo(torch.float32).eps))
    return sum(per_image) / b_count


@pytest.mark.parametrize("hard", [False, True])
def test_instance_loss_matches_a_naive_loop(hard):
    torch.manual_seed(1)
    origins = [[-2, -1], [1, 2], [3, 0], [0, 0], [4, 4]]
    batch_index = [0, 0, 0, 1, 1]
    logits = torch.randn(5, 4, 4) * 2
    fg_logits = torch.randn(2, 6, 7)
    geom = geom_of(origins, batch_index, (6, 7), 2, 4)
    loss = InstanceConsistency()(logits, geom, fg_logits, hard=hard)
    expected = naive_instance_loss(logits, origins, batch_index, torch.sigmoid(fg_logits), hard)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# L_B
# ---------------------------------------------------------------------------------------------


def test_border_of_a_full_square_by_hand():
    # one crop of ones exactly covering a 3 x 3 image: Sobel with zero padding is >= 3 on the 8 outer
    # pixels (clipped to 1 after /8) and 0 at the centre (clipped to the 1e-8 floor -> 1e-4)
    logits = torch.full((1, 3, 3), 50.0)
    geom = geom_of([[0, 0]], [0], (3, 3), 1, 3)
    b_map = principal_border_map(logits, geom)[0]
    expected = torch.full((3, 3), math.tanh(1.0))
    expected[1, 1] = math.tanh(1e-4)
    torch.testing.assert_close(b_map, expected)
    loss = BorderConsistency()(logits, geom, torch.zeros(1, 3, 3))
    hand = (8 * 0.5 * (0.5 - math.tanh(1.0)) ** 2 + 0.5 * (0.5 - math.tanh(1e-4)) ** 2) / 9
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_border_loss_averages_over_covered_pixels_only():
    logits = torch.full((1, 3, 3), 50.0)
    geom_small = geom_of([[0, 0]], [0], (3, 3), 1, 3)
    geom_big = geom_of([[0, 0]], [0], (3, 8), 1, 3)  # same crop in a wider image: 15 uncovered pixels
    e = torch.zeros(1, 3, 8)
    a = BorderConsistency()(logits, geom_small, e[:, :, :3])
    b = BorderConsistency()(logits, geom_big, e)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def naive_border_map(y, origins, shape):
    h, w = shape
    sob = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    s = y.shape[1]
    total = torch.zeros(h, w, dtype=torch.float64)
    for i in range(y.shape[0]):
        for a in range(s):
            for c in range(s):
                sy = sx = 0.0
                for da in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        aa, cc = a + da, c + dc
                        v = y[i, aa, cc].item() if 0 <= aa < s and 0 <= cc < s else 0.0
                        sy += sob[da + 1][dc + 1] * v
                        sx += sob[dc + 1][da + 1] * v
                bval = math.sqrt(min(max((sy * sy + sx * sx) / 8, 1e-8), 1.0))
                yy, xx = origins[i][0] + a, origins[i][1] + c
                if 0 <= yy < h and 0 <= xx < w:
                    total[yy, xx] += bval
    return torch.tanh(total)


def test_border_map_matches_a_naive_loop():
    torch.manual_seed(2)
    origins = [[-1, 0], [2, 2], [0, 3]]
    logits = torch.randn(3, 4, 4)
    geom = geom_of(origins, [0, 0, 0], (5, 6), 1, 4)
    got = principal_border_map(logits, geom)[0]
    expected = naive_border_map(torch.sigmoid(logits), origins, (5, 6)).float()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# L_MC
# ---------------------------------------------------------------------------------------------


def test_collapse_penalty_by_hand():
    logits = torch.zeros(2, 2, 2)  # y = 0.5
    geom = geom_of([[0, 0], [0, -1]], [0, 0], (3, 3), 1, 2)  # second crop: half outside
    loss = CollapsePenalty(0.01)(logits, geom)
    expected = 0.01 * (2 / math.sqrt(2.0) + 2 / math.sqrt(1.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_collapse_penalty_is_large_when_masks_vanish():
    geom = geom_of([[0, 0]], [0], (4, 4), 1, 2)
    small = CollapsePenalty(0.01)(torch.full((1, 2, 2), -30.0), geom)
    big = CollapsePenalty(0.01)(torch.full((1, 2, 2), 3.0), geom)
    assert small.item() > 100 * big.item()


# ---------------------------------------------------------------------------------------------
# batches, zero points, selection of images
# ---------------------------------------------------------------------------------------------


def test_losses_average_per_image_then_over_images():
    torch.manual_seed(3)
    logits = torch.randn(3, 3, 3)
    fg = torch.randn(2, 5, 5)
    geom2 = geom_of([[0, 0], [1, 1], [2, 2]], [0, 0, 1], (5, 5), 2, 3)
    both = InstanceConsistency()(logits, geom2, fg)
    first = InstanceConsistency()(logits[:2], geom_of([[0, 0], [1, 1]], [0, 0], (5, 5), 1, 3), fg[:1])
    second = InstanceConsistency()(logits[2:], geom_of([[2, 2]], [0], (5, 5), 1, 3), fg[1:])
    assert both.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-6)
    only_second = InstanceConsistency()(logits, geom2, fg, images=torch.tensor([False, True]))
    assert only_second.item() == pytest.approx(second.item(), rel=1e-6)


def test_zero_points_give_finite_losses_that_still_backpropagate():
    logits = torch.zeros(0, 4, 4, requires_grad=True)
    fg = torch.zeros(1, 6, 6, requires_grad=True)
    border = torch.zeros(1, 6, 6, requires_grad=True)
    geom = crop_geometry(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long), (6, 6), 1, 4)
    lm = ForegroundConsistency()(fg, logits, geom)
    ls = InstanceConsistency()(logits, geom, fg)
    lb = BorderConsistency()(logits, geom, border)
    lmc = CollapsePenalty()(logits, geom)
    total = lm + ls + lb + lmc
    assert torch.isfinite(total)
    assert ls.item() == 0 and lb.item() == 0 and lmc.item() == 0
    # no crops: the merged map is 0 everywhere, so the collaborator learns background (f = 0.5 -> 0.5)
    assert lm.item() == pytest.approx(0.5)
    total.backward()
    assert fg.grad is not None and logits.grad is not None


# ---------------------------------------------------------------------------------------------
# gradient flow: which side each loss updates
# ---------------------------------------------------------------------------------------------


def _leaves():
    torch.manual_seed(4)
    logits = (torch.randn(3, 4, 4) * 2).requires_grad_()
    fg = torch.randn(1, 6, 6).requires_grad_()
    border = torch.randn(1, 6, 6).requires_grad_()
    geom = geom_of([[0, 0], [1, 1], [3, 2]], [0, 0, 0], (6, 6), 1, 4)
    return logits, fg, border, geom


def _grads(loss, *tensors):
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


def test_gradient_flow_of_each_loss():
    logits, fg, border, geom = _leaves()
    prior = gaussian_prior(4, torch.full((3,), 20.0), 2.0)
    assert _grads(ForegroundConsistency()(fg, logits, geom, prior), logits, fg, border) == [False, True, False]
    assert _grads(ForegroundConsistency("cross_entropy")(fg, logits, geom, prior), logits, fg, border) == [
        False,
        True,
        False,
    ]
    for hard in (False, True):
        assert _grads(InstanceConsistency()(logits, geom, fg, hard=hard), logits, fg, border) == [True, False, False]
    assert _grads(BorderConsistency()(logits, geom, border), logits, fg, border) == [True, False, True]
    assert _grads(CollapsePenalty()(logits, geom), logits, fg, border) == [True, False, False]


def test_overlap_penalty_pushes_every_overlapping_instance_down():
    # two identical instances on the same pixels with f = 1: only the overlap term can push them down
    logits = torch.full((2, 2, 2), 1.0, requires_grad=True)
    geom = geom_of([[0, 0], [0, 0]], [0, 0], (2, 2), 1, 2)
    fg = torch.full((1, 2, 2), 30.0)
    plain = InstanceConsistency(overlap_weight=0.0)(logits, geom, fg)
    (g_plain,) = torch.autograd.grad(plain, logits)
    loss = InstanceConsistency()(logits, geom, fg)
    (g,) = torch.autograd.grad(loss, logits)
    assert (g_plain < 0).all()  # consistency alone: grow towards f = 1
    assert (g > 0).all()  # with y = 0.73 each, the overlap dominates: shrink both


# ---------------------------------------------------------------------------------------------
# supervision from masks
# ---------------------------------------------------------------------------------------------


def test_mask_centroids_are_mean_index_plus_half():
    labels = torch.zeros(4, 5, dtype=torch.long)
    labels[0:2, 0:2] = 3
    labels[3, 4] = 7
    ids, cents = mask_centroids(labels)
    assert ids.tolist() == [3, 7]
    torch.testing.assert_close(cents, torch.tensor([[1.0, 1.0], [3.5, 4.5]]))
    ids, cents = mask_centroids(torch.zeros(3, 3, dtype=torch.long))
    assert ids.numel() == 0 and cents.shape == (0, 2)


def test_supervised_instance_loss_targets_each_crops_own_mask():
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    labels[0, 0, 0] = 1
    labels[0, 0, 1] = 2
    geom = geom_of([[0, 0]], [0], (3, 3), 1, 2)
    logits = torch.zeros(1, 2, 2)
    logits[0, 0, 0] = 20.0  # predicts instance 1 only
    good = SupervisedInstanceLoss()(logits, geom, labels, torch.tensor([1]))
    bad = SupervisedInstanceLoss()(logits, geom, labels, torch.tensor([2]))
    expected_good = (math.log1p(math.exp(-20.0)) + 3 * math.log(2.0)) / 4
    assert good.item() == pytest.approx(expected_good, rel=1e-5)
    assert bad.item() > good.item() + 4
