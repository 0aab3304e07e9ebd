"""Evaluation runs end to end: a real zarr store, the real Predictor, a real (training-free) model."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from weakseg.components import ImageRecord
from weakseg.eval.evaluate import EvalResult, evaluate_strategy
from weakseg.eval.metrics import METRIC_KEYS, MetricAccumulator
from weakseg.nn.instances import Instances
from weakseg.recipe import DataConfig
from weakseg.strategy import StrategyModule


class ThresholdPrincipal(torch.nn.Module):
    """Instances = connected components of the standardised image above 0; a fixed-size crop each.

    Scores grow with the component area, so AP ranking is exercised; components smaller than
    ``min_area`` get a score below 0.5 (kept for AP, dropped for Dice/F1).
    """

    def __init__(self, crop: int = 40, min_area: int = 30) -> None:
        super().__init__()
        self.crop = crop
        self.min_area = min_area
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # so that .to(device) and .eval() are meaningful

    def predict(self, image: torch.Tensor) -> list[Instances]:
        out = []
        for im in image:
            fg = im.float().mean(0).cpu().numpy() > 0
            comp, n = ndimage.label(fg)
            h, w = fg.shape
            s = self.crop
            idx = np.arange(1, n + 1)
            if n == 0:
                out.append(Instances.empty((h, w), s))
                continue
            cy, cx = np.array(ndimage.center_of_mass(fg, comp, idx)).reshape(-1, 2).T
            areas = ndimage.sum(fg, comp, idx)
            origins = np.stack([np.floor(cy).astype(np.int64) - s // 2, np.floor(cx).astype(np.int64) - s // 2], 1)
            masks = np.zeros((n, s, s), np.float32)
            for k in range(n):
                y0, x0 = origins[k]
                ya, yb, xa, xb = max(y0, 0), min(y0 + s, h), max(x0, 0), min(x0 + s, w)
                masks[k, ya - y0 : yb - y0, xa - x0 : xb - x0] = comp[ya:yb, xa:xb] == k + 1
            scores = np.where(areas >= self.min_area, 0.5 + 0.5 * areas / (areas.max() + 1), 0.2)
            out.append(
                Instances(
                    torch.tensor(scores, dtype=torch.float32),
                    torch.tensor(np.stack([cy, cx], 1) + 0.5, dtype=torch.float32),
                    torch.from_numpy(masks),
                    torch.from_numpy(origins),
                    (h, w),
                )
            )
        return out


class ThresholdStrategy(StrategyModule):
    trainable = False

    def __init__(self) -> None:
        super().__init__()
        self.model = ThresholdPrincipal()
        self.panel_calls: list[tuple[tuple[int, ...], int]] = []

    def principal(self):
        return self.model

    def panel(self, image: torch.Tensor, group: int = 0) -> dict[str, np.ndarray]:
        x = image[0].float().mean(0)
        self.panel_calls.append((tuple(image.shape), group))
        return {"foreground": torch.sigmoid(x).numpy(), "border": np.zeros(tuple(x.shape), np.float32)}


def disc_labels(shape, n, seed, r=(5, 10)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros(shape, np.int32)
    k = 0
    for _ in range(n * 20):
        if k == n:
            break
        cy, cx, rr = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(*r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rr**2
        grown = ndimage.binary_dilation(disc, iterations=2)
        if (lab[grown] != 0).any():
            continue
        k += 1
        lab[disc] = k
    return lab


def make_store(path, n_images=5):
    """Discs on noise; ground truth = the discs, some of them cut in half in the labels (so the
    threshold model is not perfect)."""
    from weakseg.data.store import StoreWriter

    writer = StoreWriter(path)
    truth = {}
    for i in range(n_images):
        lab = disc_labels((64, 80), 7, seed=i)
        rng = np.random.default_rng(100 + i)
        img = (100 + 900 * (lab > 0) + rng.normal(0, 20, lab.shape)).astype(np.float32)
        gt = lab.copy()
        if i % 2:  # split one cell in the ground truth: the model merges what the annotator split
            ids = np.unique(gt)[1:]
            ys, xs = np.nonzero(gt == ids[0])
            gt[ys[xs > xs.mean()], xs[xs > xs.mean()]] = gt.max() + 1
        group = "lineA" if i < 3 else "lineB"
        split = "test" if i < 4 else "train"
        image_id = f"img{i}"
        truth[image_id] = (img, gt, group, split)
        writer.add(
            ImageRecord(
                image_id=image_id,
                source=f"synthetic:{i}",
                load_image=lambda img=img: img[None],
                load_labels=lambda gt=gt: gt,
                group=group,
                split=split,
            )
        )
    writer.close()
    return truth


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store.zarr"
    truth = make_store(path)
    return path, truth


def direct_metrics(truth, split="test"):
    """The same evaluation without evaluate_strategy: Predictor + MetricAccumulator by hand."""
    from weakseg.inference.predictor import Predictor

    pred = Predictor(ThresholdPrincipal())
    acc = MetricAccumulator()
    for image_id, (img, gt, group, s) in sorted(truth.items()):
        if s != split:
            continue
        acc.add_instances(gt, pred.predict_instances(img[None]), image_id=image_id, group=group)
    return acc


def test_evaluate_strategy_matches_direct_scoring(store):
    path, truth = store
    strategy = ThresholdStrategy()
    strategy.train()
    result = evaluate_strategy(strategy, DataConfig(store=str(path)), split="test", score_threshold=0.5)
    assert strategy.training  # training mode restored
    expected = direct_metrics(truth)
    assert result.overall == pytest.approx(expected.compute(), nan_ok=True)
    assert list(result.groups) == ["lineA", "lineB"]
    assert result.groups["lineB"] == pytest.approx(expected.compute("lineB"), nan_ok=True)
    assert result.overall["n_images"] == 4
    assert result.overall["n_gt"] == sum(len(np.unique(t[1])) - 1 for t in truth.values() if t[3] == "test")
    # The model finds every disc; split cells make it imperfect but good.
    assert 0.6 < result.overall["AP50"] < 1.0
    assert result.overall["coco_AP"] > 0.4
    assert result.sample is not None and result.sample.image_id == "img0"


def test_max_images_and_label_mode(store):
    path, truth = store
    cfg = DataConfig(store=str(path))
    two = evaluate_strategy(ThresholdStrategy(), cfg, split="test", max_images=2)
    assert two.overall["n_images"] == 2 and list(two.groups) == ["lineA"]
    labels_mode = evaluate_strategy(ThresholdStrategy(), cfg, split="test", masks="labels")
    # Pasted at score >= 0.5: the low-score detections are gone, so fewer predictions are ranked,
    # while the segmentation metrics (computed from score >= 0.5 anyway) stay close.
    instances_mode = evaluate_strategy(ThresholdStrategy(), cfg, split="test")
    assert labels_mode.overall["n_pred"] == instances_mode.overall["n_pred_above"]
    assert labels_mode.overall["F1"] == pytest.approx(instances_mode.overall["F1"])


def test_result_serialisation(store):
    path, _ = store
    result = evaluate_strategy(ThresholdStrategy(), DataConfig(store=str(path)), split="test")
    doc = json.loads(result.to_json())
    assert doc["split"] == "test" and doc["score_threshold"] == 0.5 and doc["masks"] == "instances"
    assert set(doc["overall"]) == set(METRIC_KEYS)
    assert set(doc["groups"]) == {"lineA", "lineB"}
    assert isinstance(doc["overall"]["n_gt"], int)
    assert doc["overall"]["AP50"] == pytest.approx(result.overall["AP50"])
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [r["group"] for r in rows] == ["all", "lineA", "lineB"]
    assert float(rows[0]["mAP"]) == pytest.approx(result.overall["mAP"])
    flat = result.flat("val")
    assert flat["val/AP50"] == result.overall["AP50"]
    assert flat["val/lineA/dice"] == result.groups["lineA"]["dice"]
    text = result.table()
    assert "lineA" in text and "AP50" in text and f"{result.overall['AP50']:.4f}" in text


def test_nan_metrics_serialise_as_null():
    result = EvalResult(split="val", overall={"AP50": math.nan, "n_gt": 0.0}, groups={})
    doc = json.loads(result.to_json())
    assert doc["overall"]["AP50"] is None and doc["overall"]["n_gt"] == 0
    assert result.to_csv().splitlines()[1].startswith("all,,")


def test_split_without_labels_is_a_user_error(tmp_path):
    from weakseg.data.store import StoreWriter
    from weakseg.errors import DataError

    writer = StoreWriter(tmp_path / "s.zarr")
    writer.add(ImageRecord(image_id="u", source="x", load_image=lambda: np.ones((1, 32, 32), np.float32), split="val"))
    writer.close()
    with pytest.raises(DataError, match="no images with ground-truth labels"):
        evaluate_strategy(ThresholdStrategy(), DataConfig(store=str(tmp_path / "s.zarr")), split="val")


class SoftRimPrincipal(ThresholdPrincipal):
    """The threshold model with soft mask rims: 0.6 inside the component eroded by 2 px, 0.3 on the
    rim, so binarising at 0.5 cuts every cell down to its core and at 0.2 keeps the whole cell."""

    def predict(self, image: torch.Tensor) -> list[Instances]:
        out = super().predict(image)
        for inst in out:
            hard = inst.masks.numpy() > 0.5
            core = np.stack([ndimage.binary_erosion(m, iterations=2) for m in hard]) if len(hard) else hard
            inst.masks = torch.from_numpy(0.3 * hard + 0.3 * core).float()
        return out


class SoftRimStrategy(ThresholdStrategy):
    def __init__(self) -> None:
        super().__init__()
        self.model = SoftRimPrincipal()


def test_mask_threshold_sweep_scores_each_threshold_from_one_prediction(store):
    path, _ = store
    cfg = DataConfig(store=str(path))
    result = evaluate_strategy(SoftRimStrategy(), cfg, split="test", sweep_mask_thresholds=(0.2, 0.5, 0.7))
    assert result.mask_threshold == 0.5 and sorted(result.sweep) == [0.2, 0.7]  # the evaluated one is not repeated
    whole = evaluate_strategy(SoftRimStrategy(), cfg, split="test", mask_threshold=0.2)
    assert result.sweep[0.2] == pytest.approx(whole.overall, nan_ok=True)
    # at 0.5 only the cores remain: worse overlap than the whole cells kept at 0.2
    assert result.sweep[0.2]["dice"] > result.overall["dice"] + 0.1
    assert result.sweep[0.2]["AP75"] > result.overall["AP75"]
    assert result.sweep[0.7]["n_pred"] == result.overall["n_pred"] and result.sweep[0.7]["AP50"] == 0.0
    assert result.best_mask_threshold() == 0.2
    doc = json.loads(result.to_json())
    assert doc["mask_threshold"] == 0.5 and doc["best_mask_threshold"] == 0.2
    assert [row["mask_threshold"] for row in doc["mask_threshold_sweep"]] == [0.2, 0.7]
    table = result.sweep_table().splitlines()
    assert table[0].split()[:3] == ["mask", "threshold", "AP50"]
    assert [line.split()[0] for line in table[1:]] == ["0.20*", "0.50", "0.70"]


def test_mask_threshold_errors(store):
    from weakseg.errors import WeaksegError

    path, _ = store
    cfg = DataConfig(store=str(path))
    with pytest.raises(WeaksegError, match="strictly between 0 and 1, got 1.5"):
        evaluate_strategy(SoftRimStrategy(), cfg, split="test", sweep_mask_thresholds=(1.5,))
    with pytest.raises(WeaksegError, match="use masks='instances'"):
        evaluate_strategy(SoftRimStrategy(), cfg, split="test", masks="labels", sweep_mask_thresholds=(0.3,))


def test_label_mode_binarises_at_the_mask_threshold(store):
    path, _ = store
    cfg = DataConfig(store=str(path))
    core = evaluate_strategy(SoftRimStrategy(), cfg, split="test", masks="labels")
    whole = evaluate_strategy(SoftRimStrategy(), cfg, split="test", masks="labels", mask_threshold=0.2)
    assert whole.overall["dice"] > core.overall["dice"] + 0.1
