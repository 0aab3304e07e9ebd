"""``weakseg predict CHECKPOINT INPUT... -o OUT``: segment images of any size with a trained model.

Inputs are TIFF/PNG/JPEG files, folders of them and zarr / OME-Zarr stores (every image inside).
Large images are tiled; small images of equal size are predicted ``--batch-size`` at a time. An
image that cannot be read or predicted is reported by name and the others still finish. The
command ends with a summary (also written to ``OUT/summary.json``) and exits non-zero when
anything failed. With ``--dask-scheduler ADDRESS`` the images are spread over the workers of a
running dask.distributed cluster (paths must be visible to the workers).

Heavy libraries are imported inside the command so that ``weakseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

FORMAT_CHOICES = ("tiff", "zarr", "coco", "csv", "png")


def register(subparsers: Any) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser(
        "predict",
        help="segment images with a trained checkpoint",
        description="Segment images (files, folders, zarr/OME-Zarr stores) of any size with a trained checkpoint.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .ckpt file or a run folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or zarr stores")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="S",
        help="resize images by S before the model (default: by each image's cell diameter estimated by the "
        "checkpoint's size model; without one, as the training images were resized)",
    )
    size.add_argument(
        "--diameter",
        type=float,
        default=None,
        metavar="D",
        help="typical cell diameter of the inputs in pixels; scale = the training cell size / D",
    )
    size.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="P",
        help="pixel size of the inputs; scale = P / the training pixel size recorded in the checkpoint",
    )
    p.add_argument(
        "--group",
        default=None,
        metavar="NAME",
        help="use this training group's (cell line's) resize factor when groups were resized differently",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="tiles, or small images of equal size, per forward pass (default 4)",
    )
    p.add_argument("--tile-size", type=int, default=1024, help="tile edge in model pixels (default 1024)")
    p.add_argument("--overlap", type=int, default=128, help="tile overlap in model pixels (default 128)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 = torch.autocast bfloat16")
    p.add_argument(
        "--format",
        default="tiff",
        metavar="LIST",
        help=f"comma-separated outputs among {','.join(FORMAT_CHOICES)} (default tiff)",
    )
    p.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score (default 0.5)")
    p.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        metavar="P",
        help=(
            "probability at which masks are binarised (default: the model's eval.mask_threshold: 0.5 unless "
            "set; auto: the strategy's label-free one)"
        ),
    )
    p.add_argument("--min-area", type=int, default=0, help="drop cells of at most this many pixels")
    add_max_overlap(p)
    p.add_argument(
        "--nan",
        choices=("background", "error"),
        default="background",
        help="NaN / infinite pixels: predict them as background with a warning (default), or fail the image",
    )
    p.add_argument(
        "--zarr-into-input",
        action="store_true",
        help="with --format zarr and OME-Zarr inputs: write labels/cells into the input image group",
    )
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS", help="dask.distributed scheduler address")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)


def add_max_overlap(p: argparse.ArgumentParser) -> None:
    """The mask NMS option shared by ``weakseg predict`` and ``weakseg evaluate``."""
    from weakseg.nn.mask_nms import DEFAULT_MAX_OVERLAP

    p.add_argument(
        "--max-overlap",
        type=float,
        default=DEFAULT_MAX_OVERLAP,
        metavar="F",
        help=(
            "drop a detection whose mask has an IoU above F with the pixels a better detection holds "
            f"(mask NMS; default {DEFAULT_MAX_OVERLAP:g}, 1 keeps all)"
        ),
    )


def parse_formats(text: str) -> tuple[str, ...]:
    from weakseg.errors import WeaksegError
    from weakseg.registry import close_matches

    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    if not formats:
        raise WeaksegError("--format: give at least one of " + ", ".join(FORMAT_CHOICES))
    for f in formats:
        if f not in FORMAT_CHOICES:
            raise WeaksegError(
                f"--format: unknown output {f!r}{close_matches(f, list(FORMAT_CHOICES))} "
                f"(choose from {', '.join(FORMAT_CHOICES)})"
            )
    return formats


def predictor_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``load_predictor`` from the command line."""
    opts: dict[str, Any] = {
        "device": args.device,
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "precision": args.precision,
        "score_threshold": args.score_threshold,
        "mask_threshold": args.mask_threshold,
        "min_area": args.min_area,
        "max_overlap": args.max_overlap,
        "nan_policy": getattr(args, "nan", "background"),
    }
    for key in ("scale", "diameter", "pixel_size", "group"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    return opts


def run_predict(args: argparse.Namespace) -> int:
    """Discover the inputs, predict them (here or on a dask cluster), write outputs and the summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from weakseg.inference.io import discover
    from weakseg.inference.jobs import RunReport

    formats = parse_formats(args.format)
    out_dir = _output_folder(args.output)
    images, problems = discover(args.inputs)
    console = Console(stderr=True)
    run = RunReport(console)
    for source, message in problems:
        run.fail(source, message)
    options = predictor_options(args)
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=args.quiet or not images, transient=False) as bar:
        overall = bar.add_task("images", total=len(images))
        run.advance = lambda: bar.advance(overall)
        if images and args.dask_scheduler:
            _run_distributed(args, options, images, out_dir, formats, run)
        elif images:
            _run_local(args, options, images, out_dir, formats, run, bar)
    return run.finish(str(args.checkpoint), out_dir, time.perf_counter() - start)


def _output_folder(path: str) -> Path:
    from weakseg.errors import WeaksegError

    out_dir = Path(path)
    if out_dir.exists() and not out_dir.is_dir():
        raise WeaksegError(f"-o {out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _small_image(predictor: Any, item: Any) -> Any:
    """The whole (C, H, W) array of an image that fits one tile, when small images are batched; else None
    (also when each image is resized by its own estimated cell size: no two share a factor)."""
    if predictor.batch_size < 2 or predictor.per_image:
        return None
    with item.open() as view:
        return view.read() if predictor.fits_one_tile(view.shape) else None


def _run_local(
    args: argparse.Namespace,
    options: dict[str, Any],
    images: list[Any],
    out_dir: Path,
    formats: tuple[str, ...],
    run: Any,
    bar: Any,
) -> None:
    """Predict every image in this process: small ones batched, large ones tiled, one failure each."""
    from weakseg.inference.jobs import SmallImageBatcher, predict_one
    from weakseg.inference.predictor import load_predictor

    predictor = load_predictor(args.checkpoint, **options)  # a bad checkpoint stops everything (exit 2)
    tiles = bar.add_task("tiles", total=None, visible=False)
    batcher = SmallImageBatcher(predictor, out_dir, formats, args.zarr_into_input)
    for item in images:
        bar.update(tiles, description=f"  {item.name}", completed=0, total=None, visible=True)

        def tick(n: int, total: int, _task: Any = tiles) -> None:
            bar.update(_task, completed=n, total=total)

        try:
            array = _small_image(predictor, item)
            if array is not None:
                run.add(batcher.add(item, array))
                continue
            record = predict_one(predictor, item, out_dir, formats, zarr_into_input=args.zarr_into_input, progress=tick)
            run.add([(item, record)])
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the others
            run.add([(item, exc)])
    run.add(batcher.finish())
    bar.update(tiles, visible=False)


def _run_distributed(
    args: argparse.Namespace,
    options: dict[str, Any],
    images: list[Any],
    out_dir: Path,
    formats: tuple[str, ...],
    run: Any,
) -> None:
    """Spread the images over the workers of a running dask.distributed cluster, one task each."""
    from weakseg.errors import WeaksegError
    from weakseg.inference.jobs import remote_predict

    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise WeaksegError("--dask-scheduler needs the 'distributed' package: pip install distributed") from exc
    try:
        client = Client(args.dask_scheduler, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise WeaksegError(f"--dask-scheduler {args.dask_scheduler}: cannot connect ({exc})") from exc
    checkpoint = str(Path(args.checkpoint).resolve())
    with client:
        futures = {
            client.submit(
                remote_predict,
                checkpoint,
                options,
                item,
                str(out_dir.resolve()),
                formats,
                args.zarr_into_input,
                pure=False,
                key=f"weakseg-predict-{k}-{item.name}",
            ): item
            for k, item in enumerate(images)
        }
        for future in as_completed(futures):
            item = futures[future]
            try:
                outcome: Any = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker's failure is reported per image
                outcome = exc
            run.add([(item, outcome)])
