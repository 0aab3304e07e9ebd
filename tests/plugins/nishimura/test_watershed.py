"""Seeded watershed: Otsu foreground (intensity or texture), given points or own seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from weakseg_nishimura.plugin import SeededWatershedConfig
from weakseg_nishimura.watershed import SeededWatershedPrincipal, foreground_mask, local_std, own_seeds

from weakseg.data.normalize import standardize

from .discs import iou, mean_instance_iou, touching_discs


def test_local_std_is_zero_on_flat_regions_and_positive_on_texture():
    img = np.zeros((20, 20), np.float32)
    img[:, 10:] = np.tile([0.0, 1.0], (20, 5))
    std = local_std(img, 3)
    assert std[10, 2] == pytest.approx(0.0, abs=1e-6)
    assert std[10, 15] > 0.4


@pytest.mark.parametrize("modality", ["fluorescence", "phase"])
def test_foreground_by_otsu(modality):
    image, labels, _ = touching_discs(modality)
    fg = foreground_mask(image[0], SeededWatershedConfig(modality=modality))
    # Phase contrast: texture (the halo) marks the cells, holes filled.
    assert iou(fg, labels > 0) > (0.85 if modality == "fluorescence" else 0.6)


@pytest.mark.parametrize("modality", ["fluorescence", "phase"])
def test_given_points_split_touching_discs(modality):
    image, labels, centres = touching_discs(modality)
    model = SeededWatershedPrincipal(SeededWatershedConfig(modality=modality))
    x = torch.from_numpy(standardize(image))[None]
    (inst,) = model.predict_with_points(x, [torch.from_numpy(centres)])
    assert len(inst) == 2 and inst.scores.tolist() == [1.0, 1.0]
    assert inst.locations.tolist() == centres.tolist()
    pred = inst.to_label_image(0.5)
    assert mean_instance_iou(labels, pred) > (0.85 if modality == "fluorescence" else 0.6)


def test_own_seeds_from_the_distance_transform_and_from_nuclei():
    image, labels, centres = touching_discs("fluorescence")
    cfg = SeededWatershedConfig(modality="fluorescence")
    seeds = own_seeds(image, labels > 0, cfg)
    assert len(seeds) == 2
    d = np.linalg.norm(np.sort(seeds, axis=0) - np.sort(centres, axis=0), axis=1)
    assert (d < 4).all()
    # A nuclear channel: two bright spots at the centres; LoG blobs give the seeds.
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]] + 0.5
    nuclei = sum(np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * 3.0**2)) for c in centres)
    two = np.concatenate([image, nuclei[None].astype(np.float32)])
    nuc_cfg = SeededWatershedConfig(modality="fluorescence", nuclear_channel=1)
    seeds = own_seeds(two, labels > 0, nuc_cfg)
    assert len(seeds) == 2
    assert (np.linalg.norm(np.sort(seeds, axis=0) - np.sort(centres, axis=0), axis=1) < 2).all()
    (inst,) = SeededWatershedPrincipal(nuc_cfg).predict(torch.from_numpy(standardize(two))[None])
    assert mean_instance_iou(labels, inst.to_label_image(0.5)) > 0.85


def test_no_seeds_and_blank_images_give_no_instances():
    model = SeededWatershedPrincipal(SeededWatershedConfig())
    (inst,) = model.predict(torch.zeros(1, 1, 16, 16))
    assert len(inst) == 0 and inst.image_shape == (16, 16)
    (inst,) = model.predict_with_points(torch.zeros(1, 1, 16, 16), [np.zeros((0, 2), np.float32)])
    assert len(inst) == 0
    with pytest.raises(ValueError, match="point sets"):
        model.predict_with_points(torch.zeros(2, 1, 16, 16), [np.zeros((0, 2))])
