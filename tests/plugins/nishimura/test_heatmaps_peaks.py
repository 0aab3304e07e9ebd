"""Gaussian targets (max-combined, peak 1) and peak detection on them."""

from __future__ import annotations

import math

import pytest
import torch
from weakseg_nishimura.heatmaps import batch_heatmaps, gaussian_heatmap
from weakseg_nishimura.peaks import find_peaks


def test_heatmap_peaks_are_one_and_combined_by_max():
    # Two close points: a sum would exceed 1 between/at them, the max keeps every peak at exactly 1.
    pts = torch.tensor([[10.5, 10.5], [10.5, 16.5]])
    heat = gaussian_heatmap(pts, (32, 40), sigma=4.0)
    assert heat.shape == (32, 40)
    assert heat[10, 10].item() == pytest.approx(1.0)
    assert heat[10, 16].item() == pytest.approx(1.0)
    assert heat.max().item() == pytest.approx(1.0)
    # one sigma away from the lone side of the first point: exp(-1/2)
    assert heat[10, 6].item() == pytest.approx(math.exp(-0.5), rel=1e-3)


def test_heatmap_of_no_points_is_zero_and_batch_shape():
    heats = batch_heatmaps([torch.zeros(0, 2), torch.tensor([[3.5, 4.5]])], (8, 9), sigma=2.0)
    assert heats.shape == (2, 1, 8, 9)
    assert heats[0].abs().sum().item() == 0.0
    assert heats[1, 0, 3, 4].item() == pytest.approx(1.0)


def test_find_peaks_recovers_points_with_threshold_and_suppression():
    pts = torch.tensor([[12.5, 12.5], [12.5, 40.5]])
    weak = 0.45 * gaussian_heatmap(torch.tensor([[30.5, 25.5]]), (48, 56), sigma=3.0)  # below the threshold
    heat = torch.maximum(gaussian_heatmap(pts, (48, 56), sigma=3.0), weak)
    loc, height = find_peaks(heat, threshold=0.5, min_distance=3)
    assert len(loc) == 2
    found = sorted(tuple(p) for p in loc.tolist())
    assert found == [pytest.approx((12.5, 12.5)), pytest.approx((12.5, 40.5))]
    assert torch.all(height >= 0.5)
    # Two bumps 4 px apart: a suppression half-width of 5 keeps only one.
    close = gaussian_heatmap(torch.tensor([[20.5, 20.5], [20.5, 24.5]]), (40, 40), sigma=1.0)
    close[20, 24] = 0.9
    assert len(find_peaks(close, 0.5, 1)[0]) == 2
    assert len(find_peaks(close, 0.5, 5)[0]) == 1


def test_find_peaks_merges_plateaus_and_handles_empty():
    heat = torch.zeros(20, 20)
    heat[5:7, 8:10] = 1.0  # a 2x2 plateau -> one peak at its centre
    loc, height = find_peaks(heat, 0.5, 2)
    assert loc.tolist() == [[6.0, 9.0]]  # pixel centres 5.5, 6.5 and 8.5, 9.5 and height.tolist() == [1.0]
    loc, height = find_peaks(torch.zeros(10, 10), 0.5, 2)
    assert loc.shape == (0, 2) and height.shape == (0,)
