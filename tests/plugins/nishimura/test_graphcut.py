"""The two-label graph cut separates touching cells; the mask variants and the crop conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from weakseg_nishimura.graphcut import binary_graphcut, edge_intensity, edge_weights
from weakseg_nishimura.masks import (
    GraphCutParams,
    component_nearest,
    label_cells_graphcut,
    label_cells_lite,
    labels_to_instances,
)

from .discs import iou, touching_discs


def seeds_at(centres: np.ndarray, shape: tuple[int, int], radius: int = 3) -> list[np.ndarray]:
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    return [np.hypot(yy - c[0], xx - c[1]) <= radius for c in centres]


@pytest.mark.parametrize(
    ("modality", "mode"), [("fluorescence", "contrast"), ("phase", "contrast"), ("phase", "intensity")]
)
def test_graph_cut_separates_two_touching_discs(modality, mode):
    image, labels, centres = touching_discs(modality)
    intensity = edge_intensity(image, modality)
    right, down = edge_weights(intensity, mode)
    seed_a, seed_b = seeds_at(centres, labels.shape, radius=10)  # cores, as strong responses give
    frame = np.zeros(labels.shape, bool)
    frame[[0, -1], :] = frame[:, [0, -1]] = True
    cut_a = binary_graphcut(seed_a, seed_b | frame, right, down)
    cut_b = binary_graphcut(seed_b, seed_a | frame, right, down)
    disc_a, disc_b = labels == 1, labels == 2
    assert iou(cut_a, disc_a) > 0.8 and iou(cut_b, disc_b) > 0.8
    assert (cut_a & disc_b).sum() < 0.05 * disc_b.sum()
    assert (cut_b & disc_a).sum() < 0.05 * disc_a.sum()


def test_edge_intensity_is_inverted_for_fluorescence():
    image, labels, _ = touching_discs("fluorescence", noise=0.0)
    fl = edge_intensity(image, "fluorescence")
    ph = edge_intensity(image, "phase")
    assert fl[labels > 0].mean() < 0.3 < 0.7 < fl[labels == 0].mean()
    np.testing.assert_allclose(fl, 1 - ph, atol=1e-6)
    with pytest.raises(ValueError, match="modality"):
        edge_intensity(image, "brightfield")


def fake_responses(labels: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responses that decay from each centre and vanish outside the discs (plus a weak halo)."""
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]] + 0.5
    maps = np.stack([np.exp(-np.hypot(yy - c[0], xx - c[1]) / 12.0) for c in centres])
    maps *= np.where(labels > 0, 1.0, 0.03)[None]
    return maps.max(axis=0).astype(np.float32), maps.argmax(axis=0)


@pytest.mark.parametrize("variant", ["lite", "graphcut"])
def test_mask_variants_recover_the_discs(variant):
    image, labels, centres = touching_discs("fluorescence")
    best, owner = fake_responses(labels, centres)
    if variant == "lite":
        out = label_cells_lite(best, owner, centres, response_threshold=0.05)
    else:
        edges = edge_weights(edge_intensity(image, "fluorescence"), "contrast")
        out = label_cells_graphcut(best, owner, centres, edges, response_threshold=0.05, params=GraphCutParams())
    assert set(np.unique(out)) == {0, 1, 2}
    for k in (1, 2):
        assert iou(out == k, labels == k) > 0.8


def test_overlaps_go_to_the_nearer_peak():
    # Both cells' responses cover the whole strip; each cut claims everything, overlaps are split by distance.
    best = np.ones((9, 40), np.float32)
    owner = np.zeros((9, 40), np.int64)
    owner[:, 20:] = 1
    centres = np.array([[4.5, 5.5], [4.5, 25.5]], np.float32)
    flat = (np.full((9, 40), 1.0), np.full((9, 40), 1.0))
    params = GraphCutParams(fg_seed_threshold=0.5, bg_seed_threshold=2.0, empty_threshold=0.0, margin=40, smooth=False)
    # bg_seed_threshold above every response: no background seeds, so each cut grows over the other cell.
    out = label_cells_graphcut(best, owner, centres, flat, response_threshold=0.1, params=params)
    assert (out[:, :16] == 1).all() and (out[:, 16:] == 2).all()  # the midpoint of 5.5 and 25.5 is 15.5


def test_component_nearest_prefers_the_one_containing_the_point():
    mask = np.zeros((10, 30), bool)
    mask[2:5, 2:5] = True
    mask[2:8, 20:28] = True
    assert component_nearest(mask, (3.5, 3.5)).sum() == 9
    assert component_nearest(mask, (3.5, 12.5)).sum() == 9  # nearer to the small one
    assert component_nearest(mask, (3.5, 17.5)).sum() == 48


def test_labels_to_instances_round_trip():
    _, labels, centres = touching_discs("fluorescence", shape=(40, 80), radius=10.0)
    labels[labels == 2] = 0
    labels[2:8, 70:79] = 2  # a box cell at the border
    locations = torch.tensor([[20.0, 30.0], [5.0, 75.0], [30.0, 5.0]])  # peak 2 has no pixels: dropped
    inst = labels_to_instances(labels, locations, torch.tensor([0.9, 0.8, 0.7]))
    assert len(inst) == 2 and inst.image_shape == (40, 80)
    assert inst.masks.shape[1] == inst.masks.shape[2] >= 21  # covers the 20-px disc bounding box
    assert inst.scores.tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_array_equal(inst.to_label_image(0.5), labels)


def test_labels_to_instances_with_a_fixed_crop_size_clips_large_cells():
    _, labels, _ = touching_discs("fluorescence", shape=(40, 80), radius=10.0)
    labels[labels == 2] = 0
    labels[2:8, 70:79] = 2
    locations = torch.tensor([[20.0, 30.0], [5.0, 75.0]])
    inst = labels_to_instances(labels, locations, torch.tensor([0.9, 0.8]), size=12)
    assert inst.masks.shape == (2, 12, 12)
    pasted = inst.to_label_image(0.5)
    assert ((pasted == 2) == (labels == 2)).all()  # the small box cell fits whole
    assert 0 < (pasted == 1).sum() <= 144 and ((pasted == 1) <= (labels == 1)).all()  # the disc is clipped
