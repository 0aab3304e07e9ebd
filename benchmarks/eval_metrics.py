"""Benchmark: metric cost per LIVECell-sized image and for pooling a LIVECell-sized test set.

A 520 x 704 ground-truth label image with ~2000 small cells (the densest LIVECell images) and a
prediction of ~2500 detections as the principal model returns them: 96 x 96 probability crops
(overlapping one another) around each cell, plus spurious low-score detections. Timed:

1. ``overlap_from_instances`` (binarise crops, sparse contingency with the ground truth);
2. ``stats_from_overlap`` (paper AP matching at 10 thresholds, COCO matching at 10 thresholds x
   4 area ranges, Dice, F1);
3. the same from a pasted label image (``image_stats``);
4. ``compute()`` pooling N copies of the per-image statistics (paper AP + pycocotools accumulate),
   and the pickled size of one image's statistics (what all_gather_object ships).

Target: per-image scoring well under the model's own inference time (~1 s/img on CPU),
pooling 1564 images (LIVECell test) in well under a minute.

    .venv/bin/python benchmarks/eval_metrics.py                 # 200 pooled images
    .venv/bin/python benchmarks/eval_metrics.py --pool 1564
"""

from __future__ import annotations

import argparse
import pickle
import time

import attrs
import numpy as np
import torch

from weakseg.eval.metrics import MetricAccumulator, image_stats, overlap_from_instances, stats_from_overlap
from weakseg.nn.instances import Instances


def livecell_like(seed: int = 0, crop: int = 96) -> tuple[np.ndarray, Instances]:
    rng = np.random.default_rng(seed)
    h, w = 520, 704
    yy, xx = np.mgrid[:h, :w]
    cy = (yy // 12) * 12 + 6
    cx = (xx // 14) * 14 + 7
    cell = ((yy - cy) ** 2 / 25 + (xx - cx) ** 2 / 36) <= 1
    index = (yy // 12) * (w // 14 + 1) + (xx // 14) + 1
    gt = np.where(cell, index, 0).astype(np.int32)
    centres = np.stack(np.meshgrid(np.arange(6, h, 12), np.arange(7, w, 14), indexing="ij"), -1).reshape(-1, 2)
    n_true = len(centres)
    n_fake = n_true // 4
    fake = rng.uniform([0, 0], [h, w], size=(n_fake, 2))
    locs = np.concatenate([centres + rng.normal(0, 1.0, size=centres.shape), fake]).astype(np.float32)
    n = len(locs)
    origins = np.floor(locs).astype(np.int64) - crop // 2
    a = np.arange(crop) + 0.5 - crop / 2
    disc = np.exp(-((a[:, None] / 5.5) ** 2 + (a[None, :] / 6.5) ** 2) ** 2)  # soft ellipse, ~ the cell size
    masks = np.broadcast_to(disc.astype(np.float32), (n, crop, crop)).copy()
    scores = np.concatenate([rng.uniform(0.4, 1.0, n_true), rng.uniform(0.2, 0.6, n_fake)]).astype(np.float32)
    inst = Instances(
        scores=torch.from_numpy(scores),
        locations=torch.from_numpy(locs),
        masks=torch.from_numpy(masks),
        origins=torch.from_numpy(origins),
        image_shape=(h, w),
    )
    return gt, inst


def best_of(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=200, help="images pooled in compute()")
    args = parser.parse_args()
    torch.set_num_threads(1)

    gt, inst = livecell_like()
    print(f"image 520 x 704: {len(np.unique(gt)) - 1} GT cells, {len(inst)} detections (96 x 96 crops)")
    t_ov, (ov, scores) = best_of(lambda: overlap_from_instances(gt, inst))
    print(f"  overlap_from_instances: {t_ov * 1000:.0f} ms  ({ov.pred.size} overlapping pairs)")
    t_st, stats = best_of(lambda: stats_from_overlap(ov, scores, image_id="x"))
    print(f"  stats_from_overlap:     {t_st * 1000:.0f} ms")
    label = inst.to_label_image(score_threshold=0.0)
    t_lab, _ = best_of(lambda: image_stats(gt, label, None, image_id="x"))
    print(f"  image_stats (label image, {label.max()} labels): {t_lab * 1000:.0f} ms")
    size = len(pickle.dumps(stats))
    print(f"  pickled ImageStats: {size / 1024:.1f} KiB")

    rng = np.random.default_rng(1)
    acc = MetricAccumulator()
    for i in range(args.pool):
        order = np.argsort(-rng.random(stats.n_pred))
        acc.add_stats(attrs.evolve(stats, image_id=f"img{i:05d}", group=f"line{i % 8}", group_index=i % 8,
                                   scores=np.sort(rng.random(stats.n_pred).astype(np.float32))[::-1],
                                   ap_tp=stats.ap_tp[order]))
    t = time.perf_counter()
    m = acc.compute(coco=False)
    t_ap = time.perf_counter() - t
    t = time.perf_counter()
    m = acc.compute()
    t_all = time.perf_counter() - t
    t = time.perf_counter()
    acc.compute_groups()
    t_groups = time.perf_counter() - t
    n_det = args.pool * stats.n_pred
    print(f"pooling {args.pool} images ({n_det} detections):")
    print(f"  paper AP/mAP + Dice + F1: {t_ap:.2f} s; with COCO AP: {t_all:.2f} s; 8 groups: {t_groups:.2f} s")
    print(f"  (mAP {m['mAP']:.3f}, coco_AP {m['coco_AP']:.3f} on shuffled copies)")


if __name__ == "__main__":
    main()
