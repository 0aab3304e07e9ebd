"""Distance NMS against a sequential greedy reference."""

from __future__ import annotations

import pytest
import torch

from weakseg.nn.nms import distance_nms, neighbour_pairs


def greedy_reference(locations: torch.Tensor, scores: torch.Tensor, distance: float, max_output=None) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(float(((locations[i] - locations[j]) ** 2).sum()) > distance**2 for j in kept):
            kept.append(i)
    return kept if max_output is None else kept[:max_output]


@pytest.mark.parametrize("seed", range(6))
def test_equals_sequential_greedy(seed):
    g = torch.Generator().manual_seed(seed)
    n = 300
    locations = torch.rand(n, 2, generator=g) * 100
    scores = torch.rand(n, generator=g)
    if seed % 2:  # quantised scores and positions: ties and exact-distance pairs
        scores = (scores * 5).round() / 5
        locations = (locations / 4).round() * 4
    kept = distance_nms(locations, scores, 8.0)
    assert kept.tolist() == greedy_reference(locations, scores, 8.0)


def test_distance_is_inclusive_and_max_output_keeps_the_best():
    locations = torch.tensor([[0.0, 0.0], [0.0, 8.0], [0.0, 16.5], [50.0, 50.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert distance_nms(locations, scores, 8.0).tolist() == [3, 0, 2]  # index 1 is exactly 8 px from 0
    assert distance_nms(locations, scores, 8.0, max_output=2).tolist() == [3, 0]
    assert distance_nms(locations[:0], scores[:0], 8.0).numel() == 0


def test_neighbour_pairs_match_brute_force():
    g = torch.Generator().manual_seed(3)
    locations = torch.rand(200, 2, generator=g) * torch.tensor([40.0, 300.0]) - 20
    i, j = neighbour_pairs(locations, 7.5)
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    d2 = torch.cdist(locations.double(), locations.double()) ** 2
    expected = {(a, b) for a in range(200) for b in range(a) if d2[a, b] <= 7.5**2}
    assert got == expected
