"""The LACSS point detector: targets and loss by hand, decoding, NMS settings, training locations."""

from __future__ import annotations

import math

import pytest
import torch
from principal_helpers import one_thread, tiny_principal  # noqa: F401 (fixture)
from weakseg_cks.detection import (
    decode_candidates,
    detection_loss_terms,
    level_targets,
    match_training_locations,
    select_detections,
)
from weakseg_cks.principal import PrincipalOutput

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_targets(points, h, w, stride, roi):
    """Nearest point per pixel from the full distance matrix (the reference's definition)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centres = torch.stack([ys, xs], -1).reshape(-1, 2)
    score = torch.zeros(h * w)
    offset = torch.zeros(2, h * w)
    if len(points):
        pf = points / stride
        d2 = torch.cdist(centres.double(), pf.double()) ** 2
        dmin, nearest = d2.min(1)
        pos = dmin < (roi / stride) ** 2
        score[pos] = 1
        offset[:, pos] = (pf[nearest] - centres).T[:, pos].float()
    return score.view(h, w), offset.view(2, h, w)


def test_targets_of_one_point_by_hand():
    # point (6, 6) image px -> (1.5, 1.5) at stride 4: the 3x3 pixels around it are within 2 feature px
    score, offset = level_targets(torch.tensor([[6.0, 6.0]]), (4, 4), 4, roi=8.0)
    expected = torch.zeros(4, 4)
    expected[0:3, 0:3] = 1
    assert torch.equal(score, expected)
    assert offset[:, 0, 0].tolist() == [1.0, 1.0] and offset[:, 2, 1].tolist() == [-1.0, 0.0]
    # stride 8: (0.75, 0.75), radius 1 -> three of the four pixels
    score8, _ = level_targets(torch.tensor([[6.0, 6.0]]), (2, 2), 8, roi=8.0)
    assert score8.tolist() == [[1.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_targets_equal_the_nearest_point_definition(stride):
    g = torch.Generator().manual_seed(stride)
    points = torch.rand(40, 2, generator=g) * torch.tensor([96.0, 128.0])
    points = torch.cat([points, points[:3] + 0.25])  # near-duplicates compete for pixels
    h, w = 96 // stride, 128 // stride
    score, offset = level_targets(points, (h, w), stride)
    ref_score, ref_offset = brute_force_targets(points, h, w, stride, 8.0)
    assert torch.equal(score, ref_score)
    assert torch.allclose(offset * score, ref_offset * ref_score, atol=1e-5)
    empty_score, _ = level_targets(torch.zeros(0, 2), (h, w), stride)
    assert empty_score.sum() == 0


def test_loss_by_hand_on_a_tiny_map():
    # one 16x16 image, levels 4/8/16 (maps 4x4, 2x2, 1x1 = 21 pixels), all logits and offsets 0
    logits = [torch.zeros(1, 1, 16 // s, 16 // s) for s in (4, 8, 16)]
    offsets = [torch.zeros(1, 2, 16 // s, 16 // s) for s in (4, 8, 16)]
    terms = detection_loss_terms(logits, offsets, (4, 8, 16), [torch.tensor([[6.0, 6.0]])])
    # focal at p = 0.5 is 0.25 * ln 2 for every pixel, whatever the target
    assert math.isclose(terms["focal"].item(), 0.25 * math.log(2), rel_tol=1e-6)
    # Huber(delta 1) on the offsets of positives, mean over (dy, dx):
    # stride 4: 4 edge neighbours (1, 0) -> 0.25 each, 4 corners (1, 1) -> 0.5 each  = 3.0
    # stride 8: offsets (.25, .25), (.25, -.75), (-.75, .25)                          = 0.34375
    # stride 16: (-.125, -.125)                                                       = 0.0078125
    assert math.isclose(terms["localization"].item(), (3.0 + 0.34375 + 0.0078125) / 21, rel_tol=1e-6)
    positives = detection_loss_terms(
        logits, offsets, (4, 8, 16), [torch.tensor([[6.0, 6.0]])], localization_norm="positives"
    )
    assert math.isclose(positives["localization"].item(), (3.0 + 0.34375 + 0.0078125) / 13, rel_tol=1e-6)


def test_focal_part_with_random_logits_and_two_images():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, 1, 32 // s, 32 // s, generator=g) for s in (4, 8)]
    offsets = [torch.zeros(2, 2, 32 // s, 32 // s) for s in (4, 8)]
    points = [torch.tensor([[5.0, 9.0], [20.0, 22.0]]), torch.zeros(0, 2)]
    terms = detection_loss_terms(logits, offsets, (4, 8), points)
    total, n = 0.0, 0
    for logit, stride in zip(logits, (4, 8), strict=True):
        for b in range(2):
            t, _ = brute_force_targets(points[b], 32 // stride, 32 // stride, stride, 8.0)
            p = torch.sigmoid(logit[b, 0].double())
            pt = t * p + (1 - t) * (1 - p)
            total += float((-((1 - pt) ** 2) * torch.log(pt)).sum())
            n += t.numel()
    assert math.isclose(terms["focal"].item(), total / n, rel_tol=1e-5)


def test_decoding_places_detections_at_grid_plus_offset_times_stride():
    logit = torch.full((1, 1, 2, 3), -5.0)
    logit[0, 0, 1, 2] = 5.0
    reg = torch.zeros(1, 2, 2, 3)
    reg[0, :, 1, 2] = torch.tensor([0.25, -0.5])
    scores, locs = decode_candidates([logit], [reg], (8,), (16, 24))
    best = scores[0].argmax()
    assert torch.allclose(locs[0, best], torch.tensor([(1 + 0.5 + 0.25) * 8, (2 + 0.5 - 0.5) * 8]))
    # a location pushed outside the (unpadded) image scores 0
    scores, _ = decode_candidates([logit], [reg], (8,), (16, 15))
    assert scores[0, best] == 0


def test_score_floor_and_cap():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7])
    locs = torch.tensor([[0.0, 0.0], [0, 40], [0, 4], [0, 80], [0, 120]])
    s, loc = select_detections(scores, locs, min_score=0.2, nms_distance=8.0, max_detections=10)
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.3])  # 0.5 is 4 px from 0.9; 0.1 is under the floor
    s, _ = select_detections(scores, locs, min_score=0.2, nms_distance=8.0, max_detections=2)
    assert s.tolist() == pytest.approx([0.9, 0.7])
    s, _ = select_detections(scores, locs, min_score=0.0, nms_distance=0.0, max_detections=10)
    assert len(s) == 5


def test_matching_takes_the_best_detection_of_the_nearest_point():
    points = torch.tensor([[20.0, 20.0], [20.0, 36.0], [80.0, 80.0]])
    det = torch.tensor([[26.0, 20.0], [20.0, 31.0], [20.0, 27.0], [20.0, 5.0], [22.0, 40.0]])
    scores = torch.tensor([0.6, 0.8, 0.95, 0.99, 0.5])
    got = match_training_locations(det, scores, points, max_offset=12.0)
    # (20, 27) 0.95 is within 12 px of both points but only serves its nearest, point 0 (7 px vs 9);
    # point 1 takes (20, 31) 0.8 over (22, 40) 0.5; (20, 5) is 15 px away: unused;
    # point 2 has no detection and keeps its location
    assert got.tolist() == [[20.0, 27.0], [20.0, 31.0], [80.0, 80.0]]


def test_training_locations_run_nms_then_match():
    model = tiny_principal(detection_levels=(4,))
    h = w = 64
    logit = torch.full((1, 1, 16, 16), -8.0)
    reg = torch.zeros(1, 2, 16, 16)

    def put(y, x, score):
        gy, gx = int(y // 4), int(x // 4)
        logit[0, 0, gy, gx] = math.log(score / (1 - score))
        reg[0, :, gy, gx] = torch.tensor([y / 4 - gy - 0.5, x / 4 - gx - 0.5])

    put(26.0, 20.0, 0.6)  # 6 px from point 0
    put(20.0, 31.0, 0.8)  # 11 px from point 0: the best within 12 px
    put(20.0, 6.0, 0.97)  # 14 px from point 0: too far
    put(45.0, 46.0, 0.9)  # near point 1 ...
    put(48.0, 49.0, 0.95)  # ... but suppressed by this one (4.2 px) which is 9 px from point 1
    out = PrincipalOutput([torch.zeros(1, 1, 16, 16)] * 4, [logit], [reg], (4,), (h, w))
    points = [torch.tensor([[20.0, 20.0], [40.0, 42.0], [60.0, 5.0]])]
    (got,) = model.training_locations(out, points)
    assert torch.allclose(got, torch.tensor([[20.0, 31.0], [48.0, 49.0], [60.0, 5.0]]), atol=1e-5)
    assert not got.requires_grad
