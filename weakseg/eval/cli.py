"""``weakseg evaluate CHECKPOINT STORE [--split test] [--json] [--csv FILE] [--max-images N] [--device D]``.

Rebuilds the checkpoint's strategy (``weakseg.checkpoint.load_strategy``), runs its principal
model on a split of a store with ground-truth masks and prints the metrics per group (cell line)
and overall: a table by default, the JSON document of :meth:`EvalResult.to_json` with ``--json``.
The recipe's data settings are kept; only the store changes. Images are resized as ``weakseg predict``
resizes them for the same checkpoint (:func:`weakseg.inference.scale.image_sizer`: ``--scale`` or
``--diameter``, else the checkpoint's size model per image, else its training factor); ``--known-sizes``
resizes each image by the cell size measured on the store instead.
Cheap to import: torch loads when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from weakseg.inference.cli import add_max_overlap


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on a labelled store split (AP, mAP, COCO AP, Dice, F1) per group",
        description=(
            "Run the checkpoint's principal model on a store split with ground-truth masks and report "
            "unsmoothed AP50/AP75/mAP (CKS paper eq. 9), COCO mask AP (pycocotools, LIVECell settings: "
            "maxDets 2000), area-weighted instance Dice (eq. 15), F1 and accuracy TP/(TP+FP+FN) at IoU 0.5, "
            "per group and overall."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file (or a run folder) written by weakseg run")
    p.add_argument("store", metavar="STORE", help="weakseg store (zarr folder) with ground-truth labels")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--csv", metavar="FILE", help="also write the metrics table as CSV")
    p.add_argument("--max-images", type=int, metavar="N", help="only the first N images of the split")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: CUDA when available)")
    p.add_argument(
        "--score-threshold", type=float, default=None, metavar="S",
        help="detections kept for Dice/F1/accuracy (default: the recipe's eval.score_threshold)",
    )
    p.add_argument(
        "--masks", choices=("instances", "labels"), default="instances",
        help="instances: each detection's own mask (overlaps allowed, as the CKS reference); "
        "labels: the pasted label image of `weakseg predict`",
    )
    p.add_argument(
        "--mask-threshold", type=float, default=None, metavar="P",
        help="probability at which masks are binarised (default: the recipe's eval.mask_threshold)",
    )
    p.add_argument(
        "--sweep-mask-threshold", type=float, nargs="+", metavar="P",
        help="also score these mask thresholds from the same predictions and print the best AP50 "
        "(calibrate eval.mask_threshold on a labelled validation split, e.g. --split val)",
    )
    add_max_overlap(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=None, metavar="S", help="resize every image by S")
    size.add_argument(
        "--diameter", type=float, default=None, metavar="D",
        help="typical cell diameter of the images in pixels (default: as `weakseg predict` sizes them)",
    )
    size.add_argument(
        "--known-sizes", action="store_true",
        help="resize images as the run resized its own: the training group factors measured on the store's "
        "masks (each image's own size with data.rescale: image)",
    )
    size.add_argument(
        "--true-diameters", action="store_true",
        help="resize each image by its own cell diameter measured on its masks, as --diameter would with each "
        "image's true value (the reference an automatic sizing is compared with)",
    )
    p.add_argument("--groups", nargs="+", metavar="GROUP", help="only these groups (cell lines)")
    p.add_argument("--batch-size", type=int, default=4, help="images or tiles per forward pass")
    p.add_argument("--tile-size", type=int, default=1024, help="tile edge in model-input pixels")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--panel", metavar="PNG", help="also draw the figure (image, instances, maps) of the first image")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import attrs

    from weakseg.checkpoint import load_strategy
    from weakseg.devices import resolve_device
    from weakseg.errors import DataError, WeaksegError
    from weakseg.eval.evaluate import evaluate_strategy
    from weakseg.inference.scale import image_sizer

    store = Path(args.store)
    if not store.exists():
        raise DataError(f"store {store} does not exist; pass the folder written by `weakseg data import`")
    if args.max_images is not None and args.max_images < 1:
        raise WeaksegError(f"--max-images must be at least 1, got {args.max_images}")
    device = resolve_device(args.device)
    strategy, ckpt = load_strategy(args.checkpoint, device=str(device))
    recipe = ckpt.recipe
    data_cfg = attrs.evolve(recipe.data, store=str(store), synthetic=None, groups=tuple(args.groups or ()))
    threshold = args.score_threshold if args.score_threshold is not None else recipe.eval.score_threshold
    if args.mask_threshold is not None:
        mask_threshold = args.mask_threshold
    else:
        from weakseg.inference.mask_threshold import checkpoint_mask_threshold

        mask_threshold = checkpoint_mask_threshold(strategy, ckpt)
    sizer = None if args.known_sizes or args.true_diameters else image_sizer(
        ckpt, strategy.principal(), scale=args.scale, diameter=args.diameter, device=device, groups_known=True
    )

    progress = None
    if not args.no_progress and sys.stderr.isatty():

        def progress(n: int, image_id: str) -> None:
            print(f"\revaluated {n} image(s) ({image_id})", end="", file=sys.stderr, flush=True)

    result = evaluate_strategy(
        strategy,
        data_cfg,
        args.split,
        args.max_images,
        threshold,
        device,
        {"batch_size": args.batch_size, "tile_size": args.tile_size, "precision": args.precision,
         "max_overlap": args.max_overlap},
        masks=args.masks,
        mask_threshold=mask_threshold,
        sweep_mask_thresholds=tuple(args.sweep_mask_threshold or ()),
        keep_sample=bool(args.panel),
        progress=progress,
        sizer=sizer,
        measured_sizes=args.true_diameters,
    )
    if progress is not None:
        print(file=sys.stderr)
    if args.csv:
        result.to_csv(args.csv)
    if args.panel:
        from weakseg.eval.panel import write_panel

        write_panel(strategy, data_cfg, args.split, args.panel, device=device, result=result)
    if args.json:
        print(result.to_json())
    else:
        print(result.table(), end="")
        if (sizer is not None and sizer.per_image) or args.true_diameters:
            print(result.sizes_table(), end="")
        if result.sweep:
            print(f"overall metrics by mask threshold (split {args.split!r}; * = best AP50):")
            print(result.sweep_table(), end="")
        print(f"checkpoint {args.checkpoint} (step {ckpt.step}, strategy {recipe.strategy.type!r})")
    return 0
