"""CKS with partial point sets: annotated regions, PU weighting and pseudo points; off = the old losses."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from test_strategies_cks import disc_batch, make_strategy
from weakseg_cks.detection import detection_loss_terms, pu_negative_weight
from weakseg_cks.losses import BorderConsistency, ForegroundConsistency, crop_geometry, foreground_weights
from weakseg_cks.self_training import pseudo_points

from weakseg.components import Batch
from weakseg.errors import RecipeError


def focal(z: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-z))
    pt = p if y else 1.0 - p
    return -((1.0 - pt) ** 2) * math.log(pt)


# ---------------------------------------------------------------------------------------------
# by hand: a 16 x 16 image with two cells, a point on the left one only, the left half annotated
# ---------------------------------------------------------------------------------------------

Z = [[1.0, 2.0], [-1.0, 0.5]]  # detection logits of the 2 x 2 grid at stride 8
LEFT = torch.zeros(1, 16, 16)
LEFT[..., :8] = 1.0


def _detect(annotated=None, prior=None):
    logits = [torch.tensor(Z)[None, None]]
    offsets = [torch.zeros(1, 2, 2, 2)]
    points = [torch.tensor([[4.0, 4.0]])]  # the left cell; the right cell at (12, 12) has no point
    kw = {"annotated": annotated} if annotated is not None else {}
    if prior is not None:
        kw["unlabelled_prior"] = prior
    return detection_loss_terms(logits, offsets, (8,), points, **kw)["focal"].item()


def test_detection_negatives_outside_the_region_get_weight_zero():
    every = [focal(1.0, 1), focal(2.0, 0), focal(-1.0, 0), focal(0.5, 0)]
    assert _detect() == pytest.approx(sum(every) / 4, rel=1e-6)
    # the right column (the unlabelled cell's half) leaves the loss and the pixel count
    assert _detect(LEFT) == pytest.approx((focal(1.0, 1) + focal(-1.0, 0)) / 2, rel=1e-6)
    # annotated everywhere: the same loss as without a region
    assert _detect(torch.ones(1, 16, 16)) == pytest.approx(_detect(), rel=1e-6)
    # a cell half inside the region counts half
    half = torch.zeros(1, 16, 16)
    half[..., :12] = 1.0
    expected = (focal(1.0, 1) + 0.5 * focal(2.0, 0) + focal(-1.0, 0) + 0.5 * focal(0.5, 0)) / 3
    assert _detect(half) == pytest.approx(expected, rel=1e-6)


def test_pu_weight_by_hand_and_in_the_detection_loss():
    p = torch.tensor([0.0, 0.5, 0.8, 0.95])
    torch.testing.assert_close(pu_negative_weight(p, 0.2), torch.tensor([1.0, 0.75, 0.0, 0.0]))
    w = [1.0 - 0.25 * math.exp(z) for z in (2.0, -1.0, 0.5)]  # p / (1 - p) = e^z
    w = [max(0.0, v) for v in w]
    expected = (focal(1.0, 1) + w[0] * focal(2.0, 0) + w[1] * focal(-1.0, 0) + w[2] * focal(0.5, 0)) / 4
    assert _detect(prior=0.2) == pytest.approx(expected, rel=1e-6)
    assert w[0] == 0.0  # the confident unlabelled pixel (p = 0.88) is not taught as background at all


def _collaborator_case():
    # one 4 x 4 crop on the labelled left cell (rows 0-3, columns 0-3) of an 8 x 8 image; left half annotated
    geom = crop_geometry(torch.tensor([[0, 0]]), torch.tensor([0]), (8, 8), 1, 4)
    crop_logits = torch.full((1, 4, 4), 2.0)
    fg = torch.linspace(-2, 2, 64).reshape(1, 8, 8)
    annotated = torch.zeros(1, 8, 8)
    annotated[..., :4] = 1.0
    return geom, crop_logits, fg, annotated


def test_collaborator_background_outside_the_region_gets_weight_zero():
    geom, crop_logits, fg, annotated = _collaborator_case()
    w = foreground_weights(geom, annotated)
    assert w[0, :4, :4].eq(1).all() and w[0, 4:, :4].eq(1).all() and w[0, :, 4:].eq(0).all()
    loss = ForegroundConsistency("linear")(fg, crop_logits, geom, weights=w).item()
    f = torch.sigmoid(fg[0])
    g = 1.0 / (1.0 + math.exp(-2.0))
    covered = (g * (1 - f[:4, :4]) + (1 - g) * f[:4, :4]).sum()
    below = f[4:, :4].sum()  # annotated, uncovered: target 0, loss f
    assert loss == pytest.approx(float((covered + below) / 32), rel=1e-6)
    assert foreground_weights(geom, None) is None
    # a crop covering pixels outside the region keeps them (the labelled cell's crop is evidence)
    geom2 = crop_geometry(torch.tensor([[0, 2]]), torch.tensor([0]), (8, 8), 1, 4)
    assert foreground_weights(geom2, annotated)[0, 0, 5] == 1.0


def test_collaborator_pu_weight_and_border_loss_unchanged():
    geom, crop_logits, fg, annotated = _collaborator_case()
    w = foreground_weights(geom, annotated, fg, 0.2)
    p = torch.sigmoid(fg[0, 7, 0])
    assert w[0, 7, 0].item() == pytest.approx(max(0.0, 1 - 0.25 * float(p / (1 - p))), rel=1e-5)
    assert w[0, 0, 0] == 1.0 and w[0, 0, 7] == 0.0
    # L_B counts crop-covered pixels only: pixels a region could switch off never enter it
    border = torch.randn(1, 8, 8)
    assert BorderConsistency()(crop_logits, geom, border).item() == pytest.approx(
        BorderConsistency()(crop_logits, geom, border).item()
    )


# ---------------------------------------------------------------------------------------------
# pseudo points
# ---------------------------------------------------------------------------------------------


def test_pseudo_points_only_above_the_threshold_and_away_from_points():
    scores = torch.tensor([0.95, 0.8, 0.79, 0.9])
    locs = torch.tensor([[10.0, 10.0], [30.0, 30.0], [50.0, 50.0], [41.0, 40.0]])
    points = [torch.tensor([[40.0, 40.0]])]
    found = pseudo_points([(scores, locs)], points, threshold=0.8, distance=12.0)[0]
    assert found.tolist() == [[10.0, 10.0], [30.0, 30.0]]  # 0.79 is below, 0.9 is the point's own detection
    none = pseudo_points([(scores, locs)], points, threshold=0.96, distance=12.0)[0]
    assert none.shape == (0, 2)


def test_pseudo_points_stay_out_of_the_pixels_not_allowed():
    scores = torch.tensor([0.9, 0.8, 0.7])
    locs = torch.tensor([[10.0, 10.0], [10.0, 50.0], [50.0, 50.0]])
    points = [torch.tensor([[40.0, 10.0]])]
    allowed = torch.zeros(64, 64, dtype=torch.bool)
    allowed[:, 32:] = True  # the right half has no annotation
    found = pseudo_points([(scores, locs)], points, threshold=0.5, distance=12.0, allowed=[allowed])[0]
    assert found.tolist() == [[10.0, 50.0], [50.0, 50.0]]
    everywhere = pseudo_points([(scores, locs)], points, threshold=0.5, distance=12.0, allowed=[None])[0]
    assert everywhere.shape == (3, 2)


def test_strategy_keeps_pseudo_points_out_of_annotated_regions_when_asked():
    batch = disc_batch()
    inside = torch.ones(batch.image.shape[0], *batch.image.shape[-2:])
    batch = attrs.evolve(batch, annotated=inside)  # every pixel annotated: nowhere to add a pseudo point
    spec = {"type": "cks", "pseudo_points": {"after": 0.0, "threshold": 0.05, "in_regions": False}}
    out = make_strategy(spec, steps=10)
    out(batch, 5)
    assert out.interval_metrics()["pseudo_points"] == 0.0
    anywhere = make_strategy({**spec, "pseudo_points": {"after": 0.0, "threshold": 0.05}}, steps=10)
    anywhere(batch, 5)
    assert anywhere.interval_metrics()["pseudo_points"] > 0


def test_pseudo_points_are_capped_per_labelled_point_best_first():
    scores = torch.tensor([0.6, 0.9, 0.7, 0.95])
    locs = torch.tensor([[10.0, 10.0], [30.0, 30.0], [50.0, 50.0], [90.0, 90.0]])
    one = [torch.tensor([[70.0, 10.0]])]
    capped = pseudo_points([(scores, locs)], one, threshold=0.5, distance=12.0, limit=0.5)[0]
    assert capped.tolist() == [[90.0, 90.0]]  # ceil(0.5 * 1) = 1, the best
    four = [torch.tensor([[70.0, 10.0], [70.0, 20.0], [70.0, 30.0], [70.0, 40.0]])]
    two = pseudo_points([(scores, locs)], four, threshold=0.5, distance=12.0, limit=0.5)[0]
    assert two.tolist() == [[90.0, 90.0], [30.0, 30.0]]
    unlabelled = pseudo_points([(scores, locs)], [torch.zeros(0, 2)], threshold=0.5, distance=12.0, limit=0.5)[0]
    assert unlabelled.shape == (0, 2)  # a crop without points gets none
    assert pseudo_points([(scores, locs)], one, threshold=0.5, distance=12.0, limit=None)[0].shape == (4, 2)


def disc_segmenter(radius):
    """A stand-in principal: the mask of a location is a disc of ``radius(location)`` px around it."""

    def segment(locations):
        size, logits, origins = 48, [], []
        grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1) + 0.5
        for loc in torch.cat(locations):
            origin = torch.floor(loc).long() - size // 2
            dist = (grid + origin - loc).norm(dim=-1)
            logits.append(radius(loc) - dist)
            origins.append(origin)
        return torch.stack(logits), torch.stack(origins)

    return segment


def test_pseudo_points_inside_a_cells_mask_are_that_cell():
    big = {(40.0, 40.0): 18.0}  # one large labelled cell; everything else has a 6 px mask
    segment = disc_segmenter(lambda loc: big.get(tuple(loc.tolist()), 6.0))
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    locs = torch.tensor([[54.0, 40.0], [80.0, 80.0], [84.0, 80.0], [100.0, 40.0]])
    points = [torch.tensor([[40.0, 40.0]])]
    found = pseudo_points([(scores, locs)], points, threshold=0.5, distance=12.0, segment=segment)[0]
    # (54, 40) lies in the labelled cell's mask; (84, 80) in the better candidate's: both the same cell
    assert found.tolist() == [[80.0, 80.0], [100.0, 40.0]]
    assert pseudo_points([(scores, locs)], points, threshold=0.5, distance=12.0)[0].shape == (4, 2)
    # a candidate whose own mask holds the point is that cell too
    grown = disc_segmenter(lambda loc: 20.0 if loc[0].item() == 54.0 else 6.0)
    held = pseudo_points([(scores, locs)], points, threshold=0.5, distance=12.0, segment=grown)[0]
    assert [54.0, 40.0] not in held.tolist()
    # the cap counts what the masks leave
    capped = pseudo_points([(scores, locs)], points, threshold=0.5, distance=12.0, limit=1.0, segment=segment)[0]
    assert capped.tolist() == [[80.0, 80.0]]


def test_strategy_adds_pseudo_points_after_the_burn_in_and_reports_them():
    low = make_strategy({"type": "cks", "pseudo_points": {"after": 0.5, "threshold": 0.05}}, steps=10)
    batch = disc_batch()
    low(batch, 2)  # burn-in: nothing added
    assert low.interval_metrics()["pseudo_points"] == 0.0
    low(batch, 5)
    assert low.interval_metrics()["pseudo_points"] > 0
    high = make_strategy({"type": "cks", "pseudo_points": {"after": 0.0, "threshold": 0.999}}, steps=10)
    high(batch, 5)
    assert high.interval_metrics()["pseudo_points"] == 0.0
    assert "pseudo_points" not in make_strategy({"type": "cks"}).interval_metrics()


def test_partial_options_are_validated():
    with pytest.raises(RecipeError, match="prior"):
        make_strategy({"type": "cks", "unlabelled": {"type": "pu", "prior": 1.5}})
    with pytest.raises(RecipeError, match="unlabelled"):
        make_strategy({"type": "mixed", "unlabelled": {"type": "pu"}})
    with pytest.raises(RecipeError, match="threshol"):
        make_strategy({"type": "cks", "pseudo_points": {"threshol": 0.5}})


# ---------------------------------------------------------------------------------------------
# off: exactly the losses of the code path without these options
# ---------------------------------------------------------------------------------------------


def reference_forward(strategy, batch: Batch, step: int) -> dict[str, torch.Tensor]:
    """CKS forward as written before partial point sets: plain detection loss, unweighted L_M."""
    from weakseg_cks.losses import crop_geometry as geometry

    model = strategy.principal_model
    points = [p.float() for p in batch.points]
    out = model.forward_train(batch.image)
    detection = model.detection_loss(out, points)
    crops = model.segment(out, model.training_locations(out, points))
    b, _, h, w = batch.image.shape
    geom = geometry(crops.origins, crops.batch_index, (h, w), b, crops.crop_size)
    group = strategy._group(batch)
    collab = strategy.collaborator(batch.image, group)
    warm = strategy.in_warmup(step)
    logits = crops.logits
    return {
        "detection": detection,
        "foreground": strategy.consistency(collab.foreground, logits, geom, strategy.prior(crops, geom, group, warm)),
        "instance": strategy.instance_loss(logits, geom, collab.foreground, hard=warm),
        "border": strategy.config.border_weight * strategy.border_loss(logits, geom, collab.border),
        "collapse": strategy.collapse_loss(logits, geom),
    }


def _train(strategy, forward, steps=3):
    opt = torch.optim.AdamW(strategy.parameters(), lr=1e-3)
    history = []
    for step in range(steps):
        losses = forward(disc_batch(seed=step), 8 + step)
        total = sum(losses[k] for k in sorted(losses))
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


def test_off_reproduces_the_old_losses_bit_for_bit():
    new = make_strategy({"type": "cks"}, steps=100)
    old = make_strategy({"type": "cks"}, steps=100)
    assert _train(new, new) == _train(old, lambda b, s: reference_forward(old, b, s))


def test_region_everywhere_and_a_tiny_prior_stay_close_to_off():
    plain = make_strategy({"type": "cks"})
    batch = disc_batch()
    base = {k: v.item() for k, v in plain(batch, 20).items()}
    everywhere = Batch(batch.image, batch.points, batch.masks, batch.group, batch.image_ids,
                       annotated=torch.ones(2, 64, 64))
    same = {k: v.item() for k, v in plain(everywhere, 20).items()}
    assert same == pytest.approx(base, rel=1e-5)
    left = torch.zeros(2, 64, 64)
    left[..., :32] = 1.0
    part = plain(Batch(batch.image, batch.points, batch.masks, batch.group, batch.image_ids, annotated=left), 20)
    assert part["detection"].item() != pytest.approx(base["detection"], rel=1e-4)
    assert part["border"].item() == pytest.approx(base["border"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# end to end: weakseg.train with a region label source, PU weighting and pseudo points
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # a real (tiny) CKS run with MLflow: about 20 s on 2 busy cores
def test_partial_run_end_to_end_logs_pseudo_points(tmp_path, monkeypatch):
    import yaml
    from mlflow import MlflowClient
    from test_strategies_cks import TINY_MODEL

    import weakseg
    from weakseg.data.store import open_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.set_num_threads(1)
    recipe = {
        "name": "partial",
        "data": {
            "store": str(tmp_path / "store.zarr"),
            "synthetic": {"n_images": 4, "size": 64, "cell_diameter": 12.0, "val_fraction": 0.5, "seed": 0},
            "crop_size": 48,
            "num_workers": 0,
            "label_source": {"type": "region", "base": "centroids", "region": {"type": "left_half"}},
        },
        "model": TINY_MODEL,
        "collaborator": {"type": "cks"},
        "strategy": {
            "type": "cks",
            "unlabelled": {"type": "pu", "prior": 0.2},
            "pseudo_points": {"after": 0.3, "threshold": 0.05},
        },
        "train": {"steps": 3, "batch_size": 1, "device": "cpu", "precision": "fp32", "eval_every": 0,
                  "checkpoint_every": 0, "log_every": 1},
        "eval": {"max_images": 1, "panel": False},
    }
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "runs"
    result = weakseg.train(path, output=out, progress=False)
    assert result.step == 3
    store = open_store(tmp_path / "store.zarr")
    assert all(store.regions(i.image_id) == ["left_half-0.5"] for i in store.select("train"))
    history = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db").get_metric_history(
        result.run_id, "train/pseudo_points"
    )
    values = {m.step: m.value for m in history}
    assert sorted(values) == [1, 2, 3]
    assert values[1] == 0.0 and values[3] > 0  # burn-in: round(0.3 * 3) = 1 step without pseudo points
