"""A small LACSS principal model learns to detect the cells of a synthetic image from points."""

from __future__ import annotations

import pytest
import torch
from principal_helpers import one_thread, tiny_principal  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_cells(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs (radius 5) on a noisy background, standardised; returns image (1, 1, H, W) and centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[14.0, 15.0], [16.5, 46.0], [45.0, 18.5], [47.0, 48.0], [31.0, 31.5]])
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    image = torch.zeros(size, size)
    for cy, cx in centres.tolist():
        image += (((ys - cy) ** 2 + (xs - cx) ** 2) < 25).float()
    image = image + 0.1 * torch.randn(size, size, generator=g)
    image = (image - image.mean()) / image.std()
    return image[None, None], centres


def test_detection_overfits_one_synthetic_image():
    model = tiny_principal(detection_levels=(4, 8))
    image, centres = synthetic_cells()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model.forward_train(image)
        loss = model.detection_loss(out, [centres])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    (pred,) = model.predict(image)
    confident = pred.locations[pred.scores >= 0.5]
    d = torch.cdist(centres, confident)
    assert (d.min(1).values < 3.0).all(), f"missed cells: {d.min(1).values}"
    assert len(confident) <= len(centres) + 1, f"{len(confident)} confident detections for {len(centres)} cells"
