"""The ``cks`` strategy learns instance masks from points alone on a few small synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from weakseg_cks.losses import mask_centroids

from weakseg.build import build_strategy
from weakseg.components import Batch, DataSummary
from weakseg.recipe import Recipe, structure


def ellipse_images(n_images: int = 3, size: int = 96, n_cells: int = 8, seed: int = 0):
    """Separated bright ellipses (semi-axes 7-11 px) on noise: (images (B, 1, H, W) standardised, labels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    images, labels = [], []
    for _ in range(n_images):
        lab = np.zeros((size, size), np.int64)
        k = 0
        for _ in range(500):
            if k == n_cells:
                break
            cy, cx = rng.uniform(12, size - 12, 2)
            a, b = rng.uniform(7, 11, 2)
            th = rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)
            v = -(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)
            if (lab[(u / (a + 3)) ** 2 + (v / (b + 3)) ** 2 <= 1] > 0).any():
                continue
            k += 1
            lab[(u / a) ** 2 + (v / b) ** 2 <= 1] = k
        img = (lab > 0).astype(np.float32) + rng.normal(0, 0.3, lab.shape).astype(np.float32)
        images.append(((img - img.mean()) / img.std())[None])
        labels.append(torch.tensor(lab))
    return torch.tensor(np.stack(images)), labels


def mean_instance_iou(instances, labels) -> float:
    """For every ground-truth cell, the IoU of the best-overlapping predicted instance (0 if none)."""
    ious = []
    for inst, lab in zip(instances, labels, strict=True):
        pred = torch.as_tensor(inst.to_label_image(score_threshold=0.5))
        for cell in lab.unique()[1:]:
            gt = lab == cell
            best = 0.0
            for j in pred[gt].unique():
                if j == 0:
                    continue
                p = pred == j
                best = max(best, float((p & gt).sum() / (p | gt).sum()))
            ious.append(best)
    return float(np.mean(ious))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_cks_from_points_only_reaches_mean_instance_iou_above_half(one_thread):
    torch.manual_seed(0)
    steps = 80
    images, labels = ellipse_images()
    points = [mask_centroids(lab)[1] for lab in labels]
    recipe = structure(
        {
            "name": "overfit",
            "data": {"store": "unused.zarr"},
            "model": {
                "backbone": {"type": "convnext_atto", "fpn_channels": 32},
                "head": {"type": "lacss", "crop_size": 48, "encoder_hidden": [64, 64]},
            },
            "collaborator": {"type": "cks"},
            "strategy": {"type": "cks", "sigma": 8.0},  # warm-up: the first 10 % of the steps
            "train": {"steps": steps},
        },
        Recipe,
    )
    strategy = build_strategy(recipe, DataSummary(in_channels=1))
    optimizer = torch.optim.AdamW(strategy.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = Batch(image=images, points=points, masks=[None] * 3, group=torch.zeros(3, dtype=torch.long))
    before = mean_instance_iou(strategy.principal().predict(images), labels)
    for step in range(steps):
        losses = strategy(batch, step)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = mean_instance_iou(strategy.principal().predict(images), labels)
    assert before < 0.2
    assert after > 0.5, f"mean instance IoU {after:.3f} after {steps} CKS steps (from points only)"
