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
import json
import sys
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
        help="resize images by S before the model (default: as the training images were resized)",
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
        help="probability at which masks are binarised (default: the model's eval.mask_threshold, 0.5 unless set)",
    )
    p.add_argument("--min-area", type=int, default=0, help="drop cells of at most this many pixels")
    p.add_argument(
        "--zarr-into-input",
        action="store_true",
        help="with --format zarr and OME-Zarr inputs: write labels/cells into the input image group",
    )
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS", help="dask.distributed scheduler address")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)


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
    }
    for key in ("scale", "diameter", "pixel_size", "group"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    return opts


def write_outputs(
    item: Any,
    view: Any,
    labels: Any,
    table: Any,
    out_dir: Path,
    formats: tuple[str, ...],
    *,
    zarr_into_input: bool = False,
) -> list[str]:
    """Write the requested outputs of one predicted image; returns their paths."""
    from weakseg.inference import export

    outputs: list[str] = []
    name = item.name
    if "tiff" in formats:
        outputs.append(str(export.write_tiff(out_dir / f"{name}.tif", labels)))
    if "zarr" in formats:
        if zarr_into_input and item.path.is_dir():
            group = item.path if item.key is None else item.path / item.key
            outputs.append(str(export.add_labels_to_ome_zarr(group, labels)))
        else:
            outputs.append(str(export.write_zarr_labels(out_dir / f"{name}.ome.zarr", labels)))
    if "coco" in formats:
        outputs.append(str(export.write_coco(out_dir / f"{name}.coco.json", labels, table, file_name=item.source)))
    if "csv" in formats:
        outputs.append(str(export.write_csv(out_dir / f"{name}.csv", labels, view, table)))
    if "png" in formats:
        outputs.append(str(export.write_png_overlay(out_dir / f"{name}_overlay.png", labels, view)))
    return outputs


def _record(item: Any, shape: Any, table: Any, outputs: list[str], seconds: float, batch: int = 1) -> dict[str, Any]:
    return {
        "name": item.name,
        "source": item.source,
        "shape": list(shape),
        "cells": len(table.scores),
        "outputs": outputs,
        "seconds": round(seconds, 3),
        "batch": batch,
    }


def predict_one(
    predictor: Any,
    item: Any,
    out_dir: Path,
    formats: tuple[str, ...],
    *,
    zarr_into_input: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Predict one :class:`~weakseg.inference.io.InputImage` (tiled) and write the requested outputs."""
    start = time.perf_counter()
    with item.open() as view:
        labels, table = predictor.predict_labels(view, progress=progress)
        outputs = write_outputs(item, view, labels, table, out_dir, formats, zarr_into_input=zarr_into_input)
        shape = view.shape
    return _record(item, shape, table, outputs, time.perf_counter() - start)


def predict_small_batch(
    predictor: Any,
    batch: list[tuple[Any, Any]],
    out_dir: Path,
    formats: tuple[str, ...],
    *,
    zarr_into_input: bool = False,
) -> list[dict[str, Any]]:
    """Predict equally shaped small images (``(item, array)`` pairs) in one forward pass, then write each."""
    start = time.perf_counter()
    instances = predictor.predict_batch([array for _item, array in batch])
    seconds = (time.perf_counter() - start) / len(batch)
    records = []
    for (item, array), inst in zip(batch, instances, strict=True):
        t0 = time.perf_counter()
        labels, table = predictor.labels_from_instances(inst)
        outputs = write_outputs(item, array, labels, table, out_dir, formats, zarr_into_input=zarr_into_input)
        records.append(_record(item, array.shape, table, outputs, seconds + time.perf_counter() - t0, len(batch)))
    return records


class SmallImageBatcher:
    """Collects small images (one tile each) by shape and predicts them ``batch_size`` at a time.

    Images of many small files (a folder of 512 x 512 PNGs) otherwise run one per forward pass,
    which leaves a GPU mostly idle. Large images are tiled and batched by tiles instead. A batch
    that fails is retried image by image, so that only the bad image is reported.
    """

    def __init__(self, predictor: Any, out_dir: Path, formats: tuple[str, ...], zarr_into_input: bool) -> None:
        self.predictor = predictor
        self.out_dir = out_dir
        self.formats = formats
        self.zarr_into_input = zarr_into_input
        self.pending: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}

    def add(self, item: Any, array: Any) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        """Queue one image; returns the results of any batch this completed."""
        group = self.pending.setdefault(tuple(array.shape), [])
        group.append((item, array))
        if len(group) >= self.predictor.batch_size:
            return self._flush(tuple(array.shape))
        if sum(len(g) for g in self.pending.values()) >= 4 * self.predictor.batch_size:  # bound memory
            return self.finish()
        return []

    def finish(self) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        """Predict everything still queued."""
        results = []
        for shape in list(self.pending):
            results += self._flush(shape)
        return results

    def _flush(self, shape: tuple[int, ...]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        batch = self.pending.pop(shape, [])
        if not batch:
            return []
        try:
            records = predict_small_batch(
                self.predictor, batch, self.out_dir, self.formats, zarr_into_input=self.zarr_into_input
            )
            return [(item, rec) for (item, _a), rec in zip(batch, records, strict=True)]
        except Exception:  # noqa: BLE001 - find the bad image: retry one by one
            results: list[tuple[Any, dict[str, Any] | BaseException]] = []
            for item, array in batch:
                try:
                    (rec,) = predict_small_batch(
                        self.predictor,
                        [(item, array)],
                        self.out_dir,
                        self.formats,
                        zarr_into_input=self.zarr_into_input,
                    )
                    results.append((item, rec))
                except Exception as exc:  # noqa: BLE001
                    results.append((item, exc))
            return results


_WORKER_PREDICTORS: dict[str, Any] = {}


def _remote_predict(
    checkpoint: str, options: dict[str, Any], item: Any, out_dir: str, formats: tuple[str, ...], zarr_into_input: bool
) -> dict[str, Any]:
    """Task run on a dask worker: the predictor is loaded once per worker process and reused."""
    from weakseg.inference.predictor import load_predictor

    key = json.dumps([checkpoint, options], sort_keys=True)
    if key not in _WORKER_PREDICTORS:
        _WORKER_PREDICTORS[key] = load_predictor(checkpoint, **options)
    return predict_one(_WORKER_PREDICTORS[key], item, Path(out_dir), formats, zarr_into_input=zarr_into_input)


def _failure(item_source: str, exc: BaseException) -> str:
    from weakseg.errors import WeaksegError

    if isinstance(exc, WeaksegError):
        text = str(exc)
        return text if item_source in text else f"{item_source}: {text}"
    return f"{item_source}: {type(exc).__name__}: {exc}"


def run_predict(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from weakseg.errors import WeaksegError
    from weakseg.inference.io import discover

    formats = parse_formats(args.format)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise WeaksegError(f"-o {out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    images, problems = discover(args.inputs)
    failures: list[dict[str, str]] = [{"source": s, "error": m} for s, m in problems]
    done: list[dict[str, Any]] = []
    console = Console(stderr=True)
    for failure in failures:
        console.print(f"[red]error[/red]: {failure['error']}", highlight=False)
    options = predictor_options(args)
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=args.quiet or not images, transient=False) as bar:
        overall = bar.add_task("images", total=len(images))
        if images and args.dask_scheduler:
            _run_distributed(args, options, images, out_dir, formats, bar, overall, done, failures, console)
        elif images:
            from weakseg.inference.predictor import load_predictor

            predictor = load_predictor(args.checkpoint, **options)  # a bad checkpoint stops everything (exit 2)
            tiles = bar.add_task("tiles", total=None, visible=False)
            batcher = SmallImageBatcher(predictor, out_dir, formats, args.zarr_into_input)

            def report(results: list[tuple[Any, dict[str, Any] | BaseException]]) -> None:
                for item, outcome in results:
                    if isinstance(outcome, BaseException):
                        failures.append({"source": item.source, "error": _failure(item.source, outcome)})
                        console.print(f"[red]error[/red]: {failures[-1]['error']}", highlight=False)
                    else:
                        done.append(outcome)
                    bar.advance(overall)

            for item in images:
                bar.update(tiles, description=f"  {item.name}", completed=0, total=None, visible=True)

                def tick(n: int, total: int, _task: Any = tiles) -> None:
                    bar.update(_task, completed=n, total=total)

                try:
                    if predictor.batch_size > 1:
                        with item.open() as view:
                            small = predictor.fits_one_tile(view.shape)
                            array = view.read() if small else None  # small: read whole, (C, H, W)
                        if array is not None:
                            report(batcher.add(item, array))
                            continue
                    report(
                        [
                            (
                                item,
                                predict_one(
                                    predictor,
                                    item,
                                    out_dir,
                                    formats,
                                    zarr_into_input=args.zarr_into_input,
                                    progress=tick,
                                ),
                            )
                        ]
                    )
                except Exception as exc:  # noqa: BLE001 - one bad image must not stop the others
                    report([(item, exc)])
            report(batcher.finish())
            bar.update(tiles, visible=False)
    elapsed = time.perf_counter() - start
    summary = {
        "checkpoint": str(args.checkpoint),
        "predicted": done,
        "failed": failures,
        "seconds": round(elapsed, 3),
    }
    from weakseg.inference.export import atomic_file

    with atomic_file(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    cells = sum(d["cells"] for d in done)
    total = len(done) + len(failures)
    print(
        f"predicted {len(done)} of {total} image(s), {cells} cells, in {elapsed:.1f} s; outputs in {out_dir}",
        file=sys.stdout,
    )
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f['error']}", file=sys.stderr)
        return 1
    return 0


def _run_distributed(
    args: argparse.Namespace,
    options: dict[str, Any],
    images: list[Any],
    out_dir: Path,
    formats: tuple[str, ...],
    bar: Any,
    overall: Any,
    done: list[dict[str, Any]],
    failures: list[dict[str, str]],
    console: Any,
) -> None:
    from weakseg.errors import WeaksegError

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
                _remote_predict,
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
                done.append(future.result())
            except Exception as exc:  # noqa: BLE001 - a worker's failure is reported per image
                failures.append({"source": item.source, "error": _failure(item.source, exc)})
                console.print(f"[red]error[/red]: {failures[-1]['error']}", highlight=False)
            bar.advance(overall)
