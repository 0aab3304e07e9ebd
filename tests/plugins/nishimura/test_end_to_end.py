"""End to end on small synthetic images: train the heatmap U-Net from points, then segment.

The bar of the baseline (issue 6): mean instance IoU > 0.4 for both variants. The short training
loop lives here (plain torch.optim) so that this test does not depend on the engine.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from weakseg.components import Batch, DataSummary
from weakseg.data.normalize import standardize
from weakseg.data.synthetic import synthetic_image
from weakseg.recipe import StrategySpec, SyntheticData

from .discs import mean_instance_iou

DIAMETER = 14.0


def rotate(image: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate a square (C, H, W) image and its (y, x) points by k quarter turns (counter-clockwise)."""
    n = image.shape[-1]
    for _ in range(k):
        image = torch.rot90(image, 1, (1, 2))
        points = torch.stack([n - points[:, 1], points[:, 0]], dim=1)
    return image, points


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = SyntheticData(n_images=8, size=80, modality="fluorescence", cell_diameter=DIAMETER, seed=1)
    images = [synthetic_image(cfg, i) for i in range(cfg.n_images)]
    train, test = images[:6], images[6:]
    spec = StrategySpec.of("nishimura", unet_base=8, unet_depth=3, sigma=DIAMETER / 4, modality="fluorescence")
    strategy = spec.build(recipe=None, data=DataSummary(in_channels=1))
    opt = torch.optim.Adam(strategy.parameters(), 2e-3)
    xs = [torch.from_numpy(standardize(t.image)) for t in train]
    ps = [torch.from_numpy(t.centers) for t in train]
    for step in range(150):
        crops = [rotate(xs[i], ps[i], int(rng.integers(4))) for i in rng.choice(len(xs), 4)]
        batch = Batch(image=torch.stack([c[0] for c in crops]), points=[c[1] for c in crops],
                      masks=[None] * 4, group=torch.zeros(4, dtype=torch.long))
        loss = strategy(batch, step)["heatmap_mse"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return strategy.eval(), test


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["graphcut", "lite"])
def test_baseline_reaches_the_iou_bar(trained, variant):
    strategy, test = trained
    model = strategy.principal()
    model.config = attrs.evolve(model.config, variant=variant)
    ious, counts = [], []
    for item in test:
        with torch.inference_mode():
            (inst,) = model.predict(torch.from_numpy(standardize(item.image))[None])
        ious.append(mean_instance_iou(item.labels, inst.to_label_image(0.5)))
        counts.append((len(inst), int(item.labels.max())))
    assert np.mean(ious) > 0.4, (ious, counts)
    # detection works: about one instance per cell
    for found, truth in counts:
        assert 0.7 * truth <= found <= 1.3 * truth


@pytest.mark.slow
def test_seeded_watershed_with_points_on_the_same_images(trained):
    _, test = trained
    model = StrategySpec.of("seeded-watershed", modality="fluorescence").build(
        recipe=None, data=DataSummary(in_channels=1)
    ).principal()
    ious = []
    for item in test:
        x = torch.from_numpy(standardize(item.image))[None]
        (inst,) = model.predict_with_points(x, [torch.from_numpy(item.centers)])
        ious.append(mean_instance_iou(item.labels, inst.to_label_image(0.5)))
    assert np.mean(ious) > 0.4, ious
