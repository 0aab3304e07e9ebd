"""``weakseg correct CHECKPOINT INPUT... -o FOLDER``: a model's detections as points to correct.

The first step of the correction loop (:mod:`weakseg.inference.correct`) on the command line. For
every input image it writes ``FOLDER/<name>.tif`` (the image, channel first) and ``FOLDER/<name>.csv``:
the detected cell centres in napari's points format with a ``score`` column. Open both in napari
(or any editor), add a point in every missed cell, delete false detections, save, and import the
folder as training data::

    weakseg correct runs/mine new_images/ -o edit/
    # ... correct edit/*.csv ...
    weakseg data import points edit/ -o stores/corrected.zarr
    weakseg run mine.yaml --set name=mine-2 --set data.store=stores/corrected.zarr --set model.init_from=runs/mine

``weakseg.inference.correct.train_from_points`` does the last two steps for images of several rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``correct`` subcommand."""
    p = subparsers.add_parser(
        "correct",
        help="write a model's detected cell centres as points CSVs to correct and retrain from",
        description="Predict images and write each as <name>.tif plus <name>.csv (detected centres in napari's "
        "points format with scores), ready to correct and to import with `weakseg data import points`.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file or a run folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or zarr stores")
    p.add_argument("-o", "--output", required=True, metavar="FOLDER", help="folder for the images and CSVs")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score (default 0.5)")
    p.add_argument("--mask-threshold", type=float, default=None, metavar="P", help="mask binarisation threshold")
    p.set_defaults(func=run_correct)


def run_correct(args: argparse.Namespace) -> int:
    """Write ``<name>.tif`` + ``<name>.csv`` per input image; exit 1 when some inputs failed."""
    import tifffile

    from weakseg.errors import WeaksegError
    from weakseg.inference.correct import detect, to_napari, write_points_csv
    from weakseg.inference.io import discover
    from weakseg.inference.predictor import load_predictor

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise WeaksegError(f"-o {out}: exists and is not a folder")
    images, problems = discover(args.inputs)
    failures = [message for _source, message in problems]
    predictor = load_predictor(
        args.checkpoint, device=args.device, score_threshold=args.score_threshold, mask_threshold=args.mask_threshold
    )
    out.mkdir(parents=True, exist_ok=True)
    points = 0
    for item in images:
        try:
            with item.open() as view:
                image = view.read()
            found = detect(predictor, image)
        except WeaksegError as exc:
            failures.append(str(exc) if item.source in str(exc) else f"{item.source}: {exc}")
            continue
        tifffile.imwrite(out / f"{item.name}.tif", image)
        write_points_csv(out / f"{item.name}.csv", to_napari(found.points), {"score": found.scores})
        points += len(found.scores)
    done = len(images) - (len(failures) - len(problems))
    print(f"wrote {done} image(s) with {points} detected points to {out}; correct the CSVs, then "
          f"`weakseg data import points {out} -o STORE`")
    for message in failures:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failures else 0
