"""Metrics against hand-computed cases, brute-force implementations and pycocotools itself."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from weakseg.eval.metrics import (
    IOU_THRESHOLDS,
    LIVECELL_AREA_RANGES,
    MetricAccumulator,
    compute_metrics,
    greedy_match,
    image_stats,
    overlap_from_instances,
    overlap_from_labels,
    overlap_from_pixels,
    stats_from_overlap,
)

# ------------------------------------------------------------------------------------------------
# Test data
# ------------------------------------------------------------------------------------------------


def hand_case() -> list[tuple[np.ndarray, np.ndarray, list[float]]]:
    """Two 10x10 images with overlaps that are easy to count by hand (see test_hand_built_case)."""
    g1 = np.zeros((10, 10), np.int32)
    g1[0:4, 0:4] = 1  # A: 16 px
    g1[5:10, 5:10] = 2  # B: 25 px
    p1 = np.zeros((10, 10), np.int32)
    p1[0:4, 0:4] = 1  # p1 = A exactly: IoU 1
    p1[5:10, 5:8] = 2  # p2: 15 px inside B: IoU 15/25 = 0.6
    p1[0:2, 6:10] = 3  # p3: 8 px touching nothing
    g2 = np.zeros((10, 10), np.int32)
    g2[0:5, 0:5] = 7  # C: 25 px (labels need not be consecutive)
    p2 = np.zeros((10, 10), np.int32)
    p2[0:5, 0:4] = 1  # q1: 20 px inside C: IoU 20/25 = 0.8
    p2[6:10, 6:10] = 2  # q2: 16 px touching nothing
    return [(g1, p1, [0.9, 0.8, 0.3]), (g2, p2, [0.7, 0.95])]


def random_labels(rng: np.random.Generator, shape=(48, 56), n=12, max_r=9) -> np.ndarray:
    """A label image of random overlapping ellipses (later ones on top), labels shuffled, gaps allowed."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros(shape, np.int32)
    ids = rng.choice(np.arange(1, 4 * n), size=n, replace=False)
    for k in ids:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(2, max_r, size=2)
        out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k
    return out


def perturbed_prediction(rng: np.random.Generator, gt: np.ndarray, n_extra=4) -> tuple[np.ndarray, np.ndarray]:
    """A prediction made of shifted copies of some GT instances plus random blobs; scores in [0, 1)."""
    h, w = gt.shape
    pred = np.zeros_like(gt)
    ids = [i for i in np.unique(gt) if i]
    label = 1
    for i in ids:
        if rng.random() < 0.2:
            continue  # missed cell
        dy, dx = rng.integers(-2, 3, size=2)
        m = np.roll(np.roll(gt == i, dy, axis=0), dx, axis=1)
        pred[m] = label
        label += 1
    extra = random_labels(rng, gt.shape, n=n_extra, max_r=5)
    for k in np.unique(extra):
        if k:
            pred[(extra == k) & (pred == 0)] = label
            label += 1
    # Later blobs may hide earlier ones completely: renumber the labels that survived as 1..N.
    present = np.unique(pred)[1:]
    lut = np.zeros(label, np.int32)
    lut[present] = np.arange(1, present.size + 1)
    pred = lut[pred]
    scores = rng.random(present.size)
    # Some exact ties, to check tie handling everywhere.
    if scores.size > 3:
        scores[1] = scores[2]
    return pred, scores


def random_masks(rng: np.random.Generator, shape, n) -> list[np.ndarray]:
    """Overlapping boolean masks (predictions that were not pasted into one label image)."""
    lab = [random_labels(rng, shape, n=1, max_r=8) > 0 for _ in range(n)]
    return [m for m in lab if m.any()]


# ------------------------------------------------------------------------------------------------
# Brute-force references (loops over all pairs, pixel sets, dense matrices)
# ------------------------------------------------------------------------------------------------


def pixel_sets(labels: np.ndarray) -> list[set[int]]:
    flat = labels.ravel()
    return [set(np.flatnonzero(flat == i).tolist()) for i in np.unique(flat) if i]


def brute_iou(gt_sets: list[set[int]], pred_sets: list[set[int]]) -> np.ndarray:
    out = np.zeros((len(pred_sets), len(gt_sets)))
    for p, ps in enumerate(pred_sets):
        for g, gs in enumerate(gt_sets):
            inter = len(ps & gs)
            out[p, g] = inter / (len(ps) + len(gs) - inter) if inter else 0.0
    return out


def brute_reference_ap(images, thresholds) -> list[float]:
    """Transcription of the CKS reference AP: per image rows sorted by score, argmax over the
    remaining columns, strict threshold; pooled over images by score (stable sort)."""
    all_scores, all_tp, n_gt = [], {t: [] for t in thresholds}, 0
    for iou, scores in images:
        order = np.argsort(-np.asarray(scores), kind="stable")
        iou = iou[order]
        n_gt += iou.shape[1]
        all_scores.extend(np.asarray(scores)[order].tolist())
        for t in thresholds:
            sim = iou.copy()
            for row in sim:
                if sim.shape[1] == 0:
                    all_tp[t].append(0)
                    continue
                j = int(np.argmax(row))
                if row[j] > t:
                    all_tp[t].append(1)
                    sim[:, j] = -1
                else:
                    all_tp[t].append(0)
    order = np.argsort(-np.asarray(all_scores), kind="stable")
    out = []
    for t in thresholds:
        tp = np.asarray(all_tp[t])[order]
        prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        out.append(float(prec[tp == 1].sum() / n_gt))
    return out


def brute_dice(images, score_threshold=0.5) -> float:
    """Eq. 15 with dense intersection matrices, numpy argmax for the best match."""
    pa_all, pd_all, ga_all, gd_all = [], [], [], []
    for gt_sets, pred_sets, scores in images:
        order = np.argsort(-np.asarray(scores), kind="stable")
        pred_sets = [pred_sets[i] for i in order if scores[i] >= score_threshold]
        inter = np.array([[len(p & g) for g in gt_sets] for p in pred_sets]).reshape(len(pred_sets), len(gt_sets))
        pa = np.array([len(p) for p in pred_sets], float)
        ga = np.array([len(g) for g in gt_sets], float)
        for i in range(len(pred_sets)):
            j = int(np.argmax(inter[i])) if len(gt_sets) else 0
            best = inter[i, j] if len(gt_sets) else 0
            pd_all.append(2 * best / (pa[i] + ga[j]) if best else 0.0)
            pa_all.append(pa[i])
        for j in range(len(gt_sets)):
            i = int(np.argmax(inter[:, j])) if len(pred_sets) else 0
            best = inter[i, j] if len(pred_sets) else 0
            gd_all.append(2 * best / (ga[j] + pa[i]) if best else 0.0)
            ga_all.append(ga[j])
    pa_all, pd_all, ga_all, gd_all = map(np.asarray, (pa_all, pd_all, ga_all, gd_all))
    return 0.5 * ((pa_all * pd_all).sum() / pa_all.sum() + (ga_all * gd_all).sum() / ga_all.sum())


def brute_matching(images, score_threshold=0.5, thresh=0.5) -> tuple[int, int, int]:
    """StarDist's ``matching`` (Hungarian, cost -(iou >= t) - iou / (2 n)), summed over images."""
    tp = fp = fn = 0
    for iou, scores in images:
        iou = iou[np.asarray(scores) >= score_threshold]
        n_pred, n_gt = iou.shape
        n = min(n_pred, n_gt)
        t = 0
        if n:
            cost = -(iou >= thresh).astype(float) - iou / (2 * n)
            r, c = linear_sum_assignment(cost)
            t = int(np.count_nonzero(iou[r, c] >= thresh))
        tp, fp, fn = tp + t, fp + n_pred - t, fn + n_gt - t
    return tp, fp, fn


def pycocotools_eval(gts: list[np.ndarray], preds: list[tuple[list[np.ndarray], list[float]]]):
    """Stock COCOeval on RLE masks with the LIVECell parameters; returns the precision array."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode()
        return r

    images, anns, dts = [], [], []
    for i, gt in enumerate(gts):
        images.append({"id": i + 1, "height": gt.shape[0], "width": gt.shape[1]})
        for k in np.unique(gt):
            if k:
                m = gt == k
                anns.append(
                    {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle(m),
                     "area": float(m.sum()), "bbox": list(mask_utils.toBbox(rle(m))), "iscrowd": 0}
                )
        for m, s in zip(*preds[i], strict=True):
            dts.append({"image_id": i + 1, "category_id": 1, "segmentation": rle(m), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dts) if dts else COCO()
        if not dts:
            coco_dt.dataset = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = [100, 500, 2000]
        ev.params.areaRng = [list(v) for v in LIVECELL_AREA_RANGES.values()]
        ev.params.areaRngLbl = list(LIVECELL_AREA_RANGES)
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, 0, :, 2]  # (T, R, A) at maxDets 2000


def coco_mean(table):
    v = table[table > -1]
    return float(v.mean()) if v.size else math.nan


def masks_of(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == k for k in np.unique(labels) if k]


# ------------------------------------------------------------------------------------------------
# Hand-built cases
# ------------------------------------------------------------------------------------------------


def test_hand_built_case():
    acc = MetricAccumulator(score_threshold=0.5)
    for i, (gt, pred, scores) in enumerate(hand_case()):
        acc.add(gt, pred, scores, image_id=f"img{i}", group="lineA" if i == 0 else "lineB", group_index=i)
    m = acc.compute()
    # Pooled ranking: q2 .95 FP, p1 .9 (IoU 1), p2 .8 (IoU .6), q1 .7 (IoU .8), p3 .3 FP; 3 GT cells.
    # t = .5: F T T T F -> (1/2 + 2/3 + 3/4) / 3 = 23/36
    assert m["AP50"] == pytest.approx(23 / 36)
    # t = .75: p2 fails -> F T F T F -> (1/2 + 2/4) / 3 = 1/3
    assert m["AP75"] == pytest.approx(1 / 3)
    # t = .5, .55 -> 23/36; t = .6 (0.6 > 0.6 is false, strict) ... .75 -> 1/3;
    # t = .8 (0.8 > 0.8 false) ... .95 -> only p1 at rank 2: (1/2) / 3 = 1/6.
    assert m["mAP"] == pytest.approx((2 * 23 / 36 + 4 / 3 + 4 / 6) / 10)
    # Score >= .5 keeps q2, p1, p2, q1: TP 3 (p1-A, p2-B, q1-C at IoU >= .5), FP 1, FN 0.
    assert m["F1"] == pytest.approx(6 / 7)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert (m["precision"], m["recall"]) == pytest.approx((3 / 4, 1.0))
    # Dice, predictions (area, dice): q2 (16, 0), p1 (16, 1), p2 (15, 30/40), q1 (20, 40/45);
    # ground truth: A (16, 1), B (25, 30/40), C (25, 40/45).
    pred_side = (16 * 0 + 16 * 1 + 15 * 0.75 + 20 * 40 / 45) / (16 + 16 + 15 + 20)
    gt_side = (16 * 1 + 25 * 0.75 + 25 * 40 / 45) / (16 + 25 + 25)
    assert m["dice"] == pytest.approx((pred_side + gt_side) / 2)
    assert (m["n_images"], m["n_gt"], m["n_pred"], m["n_pred_above"]) == (2, 3, 5, 4)
    # Per group: image 1 alone: p1 .9 T, p2 .8 T, p3 .3 F at t = .5 -> (1 + 1) / 2 = 1.
    groups = acc.compute_groups()
    assert list(groups) == ["lineA", "lineB"]
    assert groups["lineA"]["AP50"] == pytest.approx(1.0)
    assert groups["lineA"]["AP75"] == pytest.approx(0.5)  # p2 fails: (1/1) / 2
    # Image 2 alone: q2 .95 F, q1 .7 T -> (1/2) / 1.
    assert groups["lineB"]["AP50"] == pytest.approx(0.5)
    # COCO agrees with stock pycocotools on the same case.
    prec = pycocotools_eval([g for g, _, _ in hand_case()], [(masks_of(p), s) for _, p, s in hand_case()])
    assert m["coco_AP"] == pytest.approx(coco_mean(prec[:, :, 0]))
    assert m["coco_AP50"] == pytest.approx(coco_mean(prec[0, :, 0]))


def test_score_order_matters():
    """Swapping the scores of the FP q2 and the TP q1 moves the FP to the end of the ranking."""
    (g1, p1, s1), (g2, p2, s2) = hand_case()
    swapped = MetricAccumulator()
    swapped.add(g1, p1, s1, image_id="a")
    swapped.add(g2, p2, [s2[1], s2[0]], image_id="b")
    # q1 .95 T, p1 .9 T, p2 .8 T, q2 .7 F, p3 .3 F -> (1 + 1 + 1) / 3 = 1 at t = .5
    assert swapped.compute()["AP50"] == pytest.approx(1.0)
    original = MetricAccumulator()
    original.add(g1, p1, s1, image_id="a")
    original.add(g2, p2, s2, image_id="b")
    assert original.compute()["AP50"] == pytest.approx(23 / 36)
    # Score-free metrics do not change.
    for key in ("F1", "accuracy", "dice"):
        assert swapped.compute()[key] == pytest.approx(original.compute()[key])


def test_scores_as_mapping_and_default():
    (g1, p1, s1), _ = hand_case()
    a = image_stats(g1, p1, s1, image_id="x")
    b = image_stats(g1, p1, {1: 0.9, 2: 0.8, 3: 0.3}, image_id="x")
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.ap_tp, b.ap_tp)
    c = image_stats(g1, p1, None, image_id="x")
    assert np.all(c.scores == 1.0)
    with pytest.raises(ValueError, match="label 3"):
        image_stats(g1, p1, [0.9, 0.8], image_id="x")


def test_perfect_and_empty_predictions():
    rng = np.random.default_rng(0)
    gts = [random_labels(rng) for _ in range(3)]
    perfect = MetricAccumulator()
    empty = MetricAccumulator()
    for i, gt in enumerate(gts):
        perfect.add(gt, gt, None, image_id=str(i))
        empty.add(gt, np.zeros_like(gt), None, image_id=str(i))
    p = perfect.compute()
    for key in ("AP50", "AP75", "mAP", "coco_AP", "coco_AP50", "dice", "F1", "accuracy"):
        assert p[key] == pytest.approx(1.0), key
    e = empty.compute()
    for key in ("AP50", "AP75", "mAP", "coco_AP", "dice", "recall", "F1", "accuracy"):
        assert e[key] == 0.0, key
    assert math.isnan(e["precision"])  # no predictions: precision undefined


def test_no_ground_truth_gives_nan_not_crash():
    gt = np.zeros((8, 8), np.int32)
    pred = np.zeros((8, 8), np.int32)
    pred[1:4, 1:4] = 1
    acc = MetricAccumulator()
    acc.add(gt, pred, [0.9], image_id="a")
    m = acc.compute()
    assert math.isnan(m["AP50"]) and math.isnan(m["coco_AP"]) and math.isnan(m["recall"])
    assert m["precision"] == 0.0 and m["dice"] == 0.0


# ------------------------------------------------------------------------------------------------
# Against brute force on random label images
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_overlap_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = random_labels(rng)
    pred, _ = perturbed_prediction(rng, gt)
    ov, gt_ids, pred_ids = overlap_from_labels(gt, pred)
    np.testing.assert_array_equal(gt_ids, [i for i in np.unique(gt) if i])
    np.testing.assert_array_equal(pred_ids, [i for i in np.unique(pred) if i])
    expected = brute_iou(pixel_sets(gt), pixel_sets(pred))
    np.testing.assert_allclose(ov.dense("iou"), expected, rtol=0, atol=1e-12)
    assert ov.pred_areas.tolist() == [len(s) for s in pixel_sets(pred)]


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_ap_dice_f1_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    acc = MetricAccumulator()
    ap_imgs, dice_imgs = [], []
    for i in range(4):
        gt = random_labels(rng, n=int(rng.integers(0, 15)))
        pred, scores = perturbed_prediction(rng, gt)
        acc.add(gt, pred, scores, image_id=f"im{i}")
        gs, ps = pixel_sets(gt), pixel_sets(pred)
        ap_imgs.append((brute_iou(gs, ps), scores))
        dice_imgs.append((gs, ps, scores))
    m = acc.compute()
    expected = brute_reference_ap(ap_imgs, IOU_THRESHOLDS)
    assert m["AP50"] == pytest.approx(expected[0])
    assert m["AP75"] == pytest.approx(expected[5])
    assert m["mAP"] == pytest.approx(np.mean(expected))
    # Every threshold, not just the headline ones.
    tp_bits = np.concatenate([s.ap_tp for s in acc.stats])
    assert tp_bits.shape[0] == sum(len(ps) for _, ps, _ in dice_imgs)
    assert m["dice"] == pytest.approx(brute_dice(dice_imgs))
    tp, fp, fn = brute_matching(ap_imgs)
    assert m["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["accuracy"] == pytest.approx(tp / (tp + fp + fn))


@pytest.mark.parametrize("seed", [7, 8])
def test_overlapping_predictions_match_brute_force(seed):
    """Masks that overlap each other (instance crops, not a pasted label image)."""
    rng = np.random.default_rng(seed)
    acc = MetricAccumulator()
    ap_imgs, dice_imgs, coco_gts, coco_preds = [], [], [], []
    for i in range(3):
        gt = random_labels(rng, n=10)
        masks = random_masks(rng, gt.shape, 14) + [gt == k for k in np.unique(gt)[1:5]]
        scores = rng.random(len(masks))
        pred_index = np.concatenate([np.full(m.sum(), j) for j, m in enumerate(masks)])
        pixel_index = np.concatenate([np.flatnonzero(m) for m in masks])
        ov, _ = overlap_from_pixels(gt, pred_index, pixel_index, len(masks))
        acc.add_overlap(ov, scores, image_id=f"im{i}")
        gs, ps = pixel_sets(gt), [set(np.flatnonzero(m).tolist()) for m in masks]
        np.testing.assert_allclose(ov.dense(), brute_iou(gs, ps), atol=1e-12)
        ap_imgs.append((brute_iou(gs, ps), scores))
        dice_imgs.append((gs, ps, scores))
        coco_gts.append(gt)
        coco_preds.append((masks, scores))
    m = acc.compute()
    expected = brute_reference_ap(ap_imgs, IOU_THRESHOLDS)
    assert [m["AP50"], m["AP75"], m["mAP"]] == pytest.approx([expected[0], expected[5], np.mean(expected)])
    assert m["dice"] == pytest.approx(brute_dice(dice_imgs))
    tp, fp, fn = brute_matching(ap_imgs)
    assert m["accuracy"] == pytest.approx(tp / (tp + fp + fn))
    prec = pycocotools_eval(coco_gts, coco_preds)
    assert m["coco_AP"] == pytest.approx(coco_mean(prec[:, :, 0]))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_coco_ap_equals_pycocotools(seed):
    """Our sparse evaluateImg + pycocotools accumulate == stock COCOeval on RLEs (LIVECell settings)."""
    rng = np.random.default_rng(seed)
    acc = MetricAccumulator()
    gts, preds = [], []
    for i in range(4):
        # Large ellipses so that all three LIVECell area ranges are populated.
        gt = random_labels(rng, shape=(96, 96), n=int(rng.integers(1, 14)), max_r=30)
        pred, scores = perturbed_prediction(rng, gt)
        acc.add(gt, pred, scores, image_id=f"im{i}")
        gts.append(gt)
        preds.append((masks_of(pred), scores))
    m = acc.compute()
    prec = pycocotools_eval(gts, preds)
    for a, key in enumerate(("coco_AP", "coco_APs", "coco_APm", "coco_APl")):
        expected = coco_mean(prec[:, :, a])
        assert (math.isnan(m[key]) and math.isnan(expected)) or m[key] == pytest.approx(expected), key
    assert m["coco_AP50"] == pytest.approx(coco_mean(prec[0, :, 0]))
    assert m["coco_AP75"] == pytest.approx(coco_mean(prec[5, :, 0]))


def test_coco_tie_goes_to_later_ground_truth_like_pycocotools():
    """A prediction covering two equal halves has IoU exactly 0.5 with both: pycocotools takes the later."""
    gt = np.zeros((4, 8), np.int32)
    gt[:, 0:2] = 1
    gt[:, 2:4] = 2
    both = gt > 0
    first = gt == 1
    masks, scores = [both, first], [0.9, 0.8]
    pred_index = np.concatenate([np.full(m.sum(), j) for j, m in enumerate(masks)])
    pixel_index = np.concatenate([np.flatnonzero(m) for m in masks])
    ov, _ = overlap_from_pixels(gt, pred_index, pixel_index, 2)
    s = stats_from_overlap(ov, scores, image_id="t")
    # At t = .5 both predictions are TPs: 'both' takes gt 2 (the later), 'first' then takes gt 1.
    assert int(s.coco["all"].matched[0]) & 1 and int(s.coco["all"].matched[1]) & 1
    m = compute_metrics([s])
    prec = pycocotools_eval([gt], [(masks, scores)])
    assert m["coco_AP50"] == pytest.approx(coco_mean(prec[0, :, 0])) == pytest.approx(1.0)
    # The paper's AP is strict (IoU > t): 'both' is a FP at .5, 'first' (IoU 1) a TP at rank 2.
    assert m["AP50"] == pytest.approx((1 / 2) / 2)


def test_greedy_match_equals_dense_reference_and_pycocotools_rule():
    """General (multi-candidate) path of greedy_match vs dense transcriptions of both rules."""
    rng = np.random.default_rng(20)
    for _ in range(30):
        n_p, n_g = int(rng.integers(1, 12)), int(rng.integers(1, 10))
        sim = np.round(rng.random((n_p, n_g)), 1)  # coarse values: many exact ties
        sim[rng.random((n_p, n_g)) < 0.4] = 0
        t = 0.3
        # CKS reference: argmax of the remaining row, strict threshold.
        s = sim.copy()
        expect_first = []
        for row in s:
            j = int(np.argmax(row))
            expect_first.append(j if row[j] > t else -1)
            if row[j] > t:
                s[:, j] = -1
        p, g = np.nonzero(sim > t)
        got = greedy_match(p, g, sim[p, g], n_p, ties="first")
        assert got.tolist() == expect_first
        # pycocotools evaluateImg loop (gt sorted with ignored last, '<' test, break rule).
        ignore = rng.random(n_g) < 0.3
        gt_order = np.argsort(ignore, kind="mergesort")
        taken = np.zeros(n_g, bool)
        expect_last = []
        for d in range(n_p):
            best, m = t, -1
            for gi in gt_order:
                if taken[gi]:
                    continue
                if m > -1 and not ignore[m] and ignore[gi]:
                    break
                if sim[d, gi] < best:
                    continue
                best, m = sim[d, gi], gi
            expect_last.append(int(m))
            if m > -1:
                taken[m] = True
        p, g = np.nonzero(sim >= t)
        got = greedy_match(p, g, sim[p, g], n_p, ties="last", gt_ignore=ignore)
        assert got.tolist() == expect_last


# ------------------------------------------------------------------------------------------------
# Instances and accumulation
# ------------------------------------------------------------------------------------------------


def test_instances_overlap_matches_pixel_sets():
    torch = pytest.importorskip("torch")
    from weakseg.nn.instances import Instances

    rng = np.random.default_rng(30)
    gt = random_labels(rng, shape=(40, 50), n=8)
    s = 16
    n = 9
    masks = torch.rand(n, s, s)
    origins = torch.tensor(rng.integers(-8, 40, size=(n, 2)), dtype=torch.long)  # some crops cross borders
    inst = Instances(
        scores=torch.rand(n), locations=origins.float() + s / 2, masks=masks, origins=origins, image_shape=(40, 50)
    )
    ov, scores = overlap_from_instances(gt, inst, mask_threshold=0.5, chunk=4)
    np.testing.assert_allclose(scores, inst.scores.numpy().astype(np.float64))
    pred_sets = []
    for i in range(n):
        pix = set()
        y0, x0 = origins[i].tolist()
        for a, b in zip(*np.nonzero(masks[i].numpy() >= 0.5), strict=True):
            y, x = y0 + a, x0 + b
            if 0 <= y < 40 and 0 <= x < 50:
                pix.add(int(y * 50 + x))
        pred_sets.append(pix)
    assert ov.pred_areas.tolist() == [len(p) for p in pred_sets]
    np.testing.assert_allclose(ov.dense(), brute_iou(pixel_sets(gt), pred_sets), atol=1e-12)
    # Pasted into a label image and scored as such, a non-overlapping set gives the same metrics.
    sparse = Instances(
        scores=torch.tensor([0.9, 0.6]),
        locations=torch.zeros(2, 2),
        masks=torch.ones(2, 5, 5),
        origins=torch.tensor([[0, 0], [10, 10]]),
        image_shape=(40, 50),
    )
    a = MetricAccumulator()
    a.add_instances(gt, sparse, image_id="x")
    b = MetricAccumulator()
    b.add(gt, sparse.to_label_image(score_threshold=0.0), [0.9, 0.6], image_id="x")
    assert a.compute() == pytest.approx(b.compute(), nan_ok=True)


def test_merging_two_halves_equals_one_pass():
    rng = np.random.default_rng(40)
    data = []
    for i in range(6):
        gt = random_labels(rng, n=10)
        pred, scores = perturbed_prediction(rng, gt)
        scores = np.round(scores, 1)  # ties across images: order must not depend on merge order
        data.append((f"img{i:02d}", "even" if i % 2 == 0 else "odd", i % 2, gt, pred, scores))
    one = MetricAccumulator()
    for image_id, group, gi, gt, pred, scores in data:
        one.add(gt, pred, scores, image_id=image_id, group=group, group_index=gi)
    first, second = MetricAccumulator(), MetricAccumulator()
    for k, (image_id, group, gi, gt, pred, scores) in enumerate(reversed(data)):
        (first if k % 2 else second).add(gt, pred, scores, image_id=image_id, group=group, group_index=gi)
    merged = MetricAccumulator().merge(second).merge(first)
    assert merged.compute() == one.compute()
    assert merged.compute_groups() == one.compute_groups()
    assert list(one.compute_groups()) == ["even", "odd"]
    with pytest.raises(ValueError, match="already scored"):
        merged.merge(first)
    # Pickle round trip (what all_gather_object does).
    import pickle

    shipped = pickle.loads(pickle.dumps(first.stats)) + pickle.loads(pickle.dumps(second.stats))
    again = MetricAccumulator().merge(shipped)
    assert again.compute() == one.compute()


def test_iou_is_fast_on_livecell_sized_images():
    """~2000 cells and ~2500 predictions on a 520x704 image: no pairwise loops (well under a second)."""
    import time

    rng = np.random.default_rng(50)
    h, w = 520, 704
    # A grid of 2000 small cells (the densest LIVECell images) and a shifted copy as prediction.
    gt = np.zeros((h, w), np.int32)
    cy, cx = np.meshgrid(np.arange(6, h, 12), np.arange(6, w, 14), indexing="ij")
    yy, xx = np.mgrid[:h, :w]
    cell = ((yy % 12 - 6) ** 2 / 25 + (xx % 14 - 7) ** 2 / 36) <= 1
    index = (yy // 12) * (w // 14 + 1) + (xx // 14) + 1
    gt[cell] = index[cell]
    pred = np.roll(gt, 2, axis=1)
    scores = rng.random(int(pred.max()))
    start = time.perf_counter()
    s = image_stats(gt, pred, scores, image_id="big")
    elapsed = time.perf_counter() - start
    assert s.n_gt > 1900
    assert elapsed < 5.0  # generous for a shared 2-core machine; typically ~0.1-0.2 s


@pytest.mark.realdata
def test_real_labels_against_pycocotools_and_brute_force(shared_data):
    """Usiigaci phase-contrast masks (1022 x 1024): a degraded copy scored by us, by brute force and by COCOeval."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(60)
    gts, preds, ap_imgs, dice_imgs = [], [], [], []
    acc = MetricAccumulator()
    for name in ("set1", "set7"):
        gt = np.asarray(Image.open(shared_data / "usiigaci" / name / "instances_ids.png")).astype(np.int32)
        pred = np.zeros_like(gt)
        label = 0
        for k in np.unique(gt)[1:]:
            r = rng.random()
            if r < 0.1:
                continue  # missed
            m = gt == k
            m = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 6))) if r < 0.7 else ndimage.binary_dilation(m)
            label += 1
            pred[m & (pred == 0)] = label
        present = np.unique(pred)[1:]
        lut = np.zeros(label + 1, np.int32)
        lut[present] = np.arange(1, present.size + 1)
        pred = lut[pred]
        scores = rng.random(present.size)
        acc.add(gt, pred, scores, image_id=name)
        gs, ps = pixel_sets(gt), pixel_sets(pred)
        ap_imgs.append((brute_iou(gs, ps), scores))
        dice_imgs.append((gs, ps, scores))
        gts.append(gt)
        preds.append((masks_of(pred), scores))
    m = acc.compute()
    expected = brute_reference_ap(ap_imgs, IOU_THRESHOLDS)
    assert [m["AP50"], m["AP75"], m["mAP"]] == pytest.approx([expected[0], expected[5], np.mean(expected)])
    assert m["dice"] == pytest.approx(brute_dice(dice_imgs))
    tp, fp, fn = brute_matching(ap_imgs)
    assert m["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    prec = pycocotools_eval(gts, preds)
    for a, key in enumerate(("coco_AP", "coco_APs", "coco_APm", "coco_APl")):
        expected_coco = coco_mean(prec[:, :, a])
        assert (math.isnan(m[key]) and math.isnan(expected_coco)) or m[key] == pytest.approx(expected_coco), key
    assert 0.2 < m["mAP"] < 0.9
