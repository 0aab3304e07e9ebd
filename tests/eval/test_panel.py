"""The evaluation figure: tiles, outlines, maps, and the engine's write_panel entry point."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from weakseg.eval.panel import _GAP, _HEADER, boundaries, label_colors, make_panel, write_panel
from weakseg.nn.instances import Instances


def test_boundaries_are_inner_outlines():
    lab = np.zeros((8, 8), np.int32)
    lab[2:6, 2:6] = 3
    edge = boundaries(lab)
    assert edge.sum() == 12  # the ring of a 4x4 square
    assert not edge[3:5, 3:5].any() and not edge[lab == 0].any()
    # Two touching cells: both sides of the contact line are outlined.
    lab[2:6, 6:8] = 4
    assert boundaries(lab)[2:6, 5].all() and boundaries(lab)[2:6, 6].all()


def test_label_colors_distinct():
    colors = label_colors(50)
    assert colors.shape == (51, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors[1:]}) == 50


def test_make_panel_layout_and_content():
    h, w = 40, 60
    image = np.zeros((1, h, w), np.uint16)
    image[0, 10:30, 10:30] = 1000
    labels = np.zeros((h, w), np.int32)
    labels[10:30, 10:30] = 1
    maps = {"collaborator_foreground": np.full((20, 30), 0.9, np.float32), "border": np.zeros((h, w))}
    arr = make_panel(image, labels, maps, ground_truth=labels, as_array=True, min_size=1)
    n_tiles = 5  # image, ground truth, instances, two maps
    assert arr.shape == (_HEADER + h + _GAP, n_tiles * (w + _GAP) + _GAP, 3)
    tile = lambda k: arr[_HEADER : _HEADER + h, _GAP + k * (w + _GAP) : _GAP + k * (w + _GAP) + w]  # noqa: E731
    img_tile, gt_tile, pred_tile, fg_tile, border_tile = (tile(k) for k in range(5))
    # The image tile is grey; outlines are coloured exactly on the instance border.
    assert (img_tile[..., 0] == img_tile[..., 1]).all()
    edge = boundaries(labels)
    assert (gt_tile[edge] != img_tile[edge]).any(axis=-1).all()
    assert (gt_tile[~edge] == img_tile[~edge]).all()
    # Predictions are also filled translucently inside.
    inside = (labels > 0) & ~edge
    assert (pred_tile[inside] != img_tile[inside]).any(axis=-1).all()
    # A low-resolution map is resized to the image; a constant 0.9 map is one bright colour.
    assert len({tuple(p) for p in fg_tile.reshape(-1, 3)}) == 1
    assert fg_tile.astype(int).sum() > border_tile.astype(int).sum()
    # By default small images are enlarged by an integer factor (here ceil(256 / 60) = 5).
    big = make_panel(image, labels, as_array=True)
    assert big.shape == (_HEADER + 5 * h + _GAP, 2 * (5 * w + _GAP) + _GAP, 3)


def test_make_panel_png_from_instances_and_crop():
    h, w = 50, 900  # wider than max_size: centre-cropped
    masks = torch.zeros(2, 10, 10)
    masks[:, 2:8, 2:8] = 1.0
    inst = Instances(
        scores=torch.tensor([0.9, 0.3]),
        locations=torch.tensor([[20.0, 450.0], [30.0, 460.0]]),
        masks=masks,
        origins=torch.tensor([[15, 445], [25, 455]]),
        image_shape=(h, w),
    )
    png = make_panel(np.random.default_rng(0).random((h, w)), inst, title="t", max_size=200)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(png))
    assert im.size == (2 * (200 + _GAP) + _GAP, 2 * _HEADER + h + _GAP)


def test_write_panel_uses_sample_and_strategy_maps(tmp_path):
    from weakseg.eval.evaluate import evaluate_strategy
    from weakseg.recipe import DataConfig

    from .test_evaluate import ThresholdStrategy, make_store

    make_store(tmp_path / "store.zarr")
    cfg = DataConfig(store=str(tmp_path / "store.zarr"), group_scales={"lineA": 0.5, "lineB": 0.5})
    strategy = ThresholdStrategy()
    result = evaluate_strategy(strategy, cfg, split="test")
    out = write_panel(strategy, cfg, "test", tmp_path / "eval" / "panel.png", result=result)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The strategy saw the standardised image at the model's scale (64x80 * 0.5), with its group.
    assert strategy.panel_calls == [((1, 1, 32, 40), 0)]
    im = Image.open(out)
    # image, gt, instances, 2 maps; 64 x 80 enlarged 4x (to >= 256 px)
    assert im.size == (5 * (320 + _GAP) + _GAP, 2 * _HEADER + 256 + _GAP)
    # Without a result, write_panel evaluates the first image itself.
    again = write_panel(strategy, cfg, "test", tmp_path / "p2.png")
    assert Image.open(again).size == im.size
