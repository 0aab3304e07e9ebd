"""``weakseg data import | info | show | region``.

Examples::

    weakseg data import folder ../shared/data/usiigaci -o usiigaci.zarr --set 'splits.test=set(3[1-9]|40)'
    weakseg data import folder ../shared/data/kromp -o kromp.zarr --set group_column=Diagnosis
    weakseg data import coco LIVECell/ -o livecell.zarr
    weakseg data import a431 a431/ -o a431.zarr --set nuclei='nuclei/{stem}.tif' \\
        --label-source '{type: nuclei, diameter: 20}'
    weakseg data info usiigaci.zarr --json
    weakseg data show usiigaci.zarr set1 -o set1.png
    weakseg data region usiigaci.zarr set1 set1_shapes.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

IMPORT_EXAMPLES = """examples:
  weakseg data import folder ../shared/data/usiigaci -o usiigaci.zarr --set 'splits.test=set(3[1-9]|40)'
  weakseg data import folder ../shared/data/kromp -o kromp.zarr --set group_column=Diagnosis \\
      --set test_fraction=0.2 --set split_seed=0
  weakseg data import folder cells/ -o cells.zarr --set 'images=raw/*.tif' --set 'labels=gt/{stem}_label.png'
  weakseg data import livecell LIVECell/ -o livecell.zarr --set 'cell_lines=[A172, BV2]'
  weakseg data import points pics/ -o pts.zarr --set 'points={parent}/{stem}.csv'   # napari CSVs work
  weakseg data import a431 a431/ -o a431.zarr --set 'nuclei=nuclei/{stem}.tif' \\
      --label-source '{type: nuclei, diameter: 20}'

importer options (--set): an unknown key lists the allowed ones; splits.NAME=REGEX (full match on the image
id), val_fraction / test_fraction / split_seed, group, group_pattern=REGEX, pixel_size, id."""


def _positive_int(text: str) -> int:
    """argparse type of counts and sizes: a bad value is a usage error (exit 2) naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="import data into a store, inspect it, draw overlays")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    pi = sub.add_parser(
        "import",
        help="import images (and masks / points) into a weakseg zarr store",
        description="Import SOURCE with IMPORTER (see `weakseg plugins`: importers) into the store STORE. "
        "An interrupted import resumes when the same command is run again.",
        epilog=IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pi.add_argument("importer", metavar="IMPORTER", help="importer name: folder, coco, livecell, points, a431, ...")
    pi.add_argument("source", metavar="SOURCE", help="folder (or file) to import")
    pi.add_argument("-o", "--output", required=True, metavar="STORE", help="the store to write (a .zarr folder)")
    pi.add_argument(
        "--label-source",
        action="append",
        default=[],
        metavar="SPEC",
        help="point labels computed now and stored: a name (centroids) or YAML ('{type: nuclei, diameter: 20}'); "
        "repeatable; default: centroids for images with masks; 'none' computes nothing",
    )
    pi.add_argument("--skip-bad", action="store_true", help="skip unreadable or inconsistent images and report them")
    pi.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="importer option (YAML value)")
    pi.add_argument("--overwrite", action="store_true", help="replace an existing store")
    pi.add_argument(
        "--workers", type=_positive_int, default=None, help="parallel image writers (default: CPU count)"
    )
    pi.add_argument("--json", action="store_true", help="print the result as JSON")
    pi.set_defaults(func=_cmd_import)

    pn = sub.add_parser("info", help="counts of a store: images, instances, points, groups, sizes per split")
    pn.add_argument("store", metavar="STORE")
    pn.add_argument("--json", action="store_true", help="machine-readable output")
    pn.add_argument("--images", action="store_true", help="also list every image")
    pn.set_defaults(func=_cmd_info)

    ps = sub.add_parser("show", help="draw one image with its masks and points into a PNG")
    ps.add_argument("store", metavar="STORE")
    ps.add_argument("image", metavar="IMAGE", help="image id (see `weakseg data info STORE --images`)")
    ps.add_argument("-o", "--output", required=True, metavar="PNG")
    ps.add_argument("--points", default=None, metavar="NAME", help="stored point set (default: the first one)")
    ps.add_argument("--label-source", default=None, metavar="SPEC", help="compute points with this label source")
    ps.add_argument("--no-labels", action="store_true", help="do not draw the masks")
    ps.add_argument("--region", default=None, metavar="Y0:Y1,X0:X1", help="draw only this region")
    ps.add_argument(
        "--annotated", default=None, metavar="NAME",
        help="outline this stored region (default: 'annotated', or the image's only region)",
    )
    ps.add_argument(
        "--max-size", type=_positive_int, default=2048, help="downsample larger views to this edge (pixels)"
    )
    ps.set_defaults(func=_cmd_show)

    pr = sub.add_parser(
        "region",
        help="store where an image's points are complete (its annotated region)",
        description="Store the annotated region of IMAGE: cells outside it may lack a point, so training does "
        "not teach them as background. FILE is a napari shapes-layer CSV (rectangles, ellipses, polygons) or a "
        "label image of the image's size (non-zero = annotated).",
    )
    pr.add_argument("store", metavar="STORE")
    pr.add_argument("image", metavar="IMAGE", help="image id (see `weakseg data info STORE --images`)")
    pr.add_argument("file", metavar="FILE", help="napari shapes CSV or label image")
    pr.add_argument("--name", default="annotated", help="region name (default: annotated, the one training uses)")
    pr.set_defaults(func=_cmd_region)


def _quote_templates(item: str) -> str:
    """``labels={parent}/{stem}.png`` is a file template, not YAML flow syntax: pass it as a string."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or "{" not in raw:
        return item
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = None
    else:
        if not (isinstance(value, dict) and all(v is None for v in value.values())):
            return item  # a real mapping ({test: set1}) or a plain string
    return f"{key}={json.dumps(raw)}"


def _options(items: list[str]) -> dict[str, Any]:
    from weakseg.errors import RecipeError
    from weakseg.recipe import apply_overrides

    try:
        return apply_overrides({}, [_quote_templates(i) for i in items])
    except RecipeError as exc:
        raise RecipeError(str(exc).replace("recipe.", "")) from None


def _cmd_import(args: argparse.Namespace) -> int:
    from weakseg.data.ingest import parse_label_sources, run_import

    options = _options(args.set)
    label_sources = parse_label_sources(args.label_source)
    progress = _Progress() if sys.stderr.isatty() and not args.json else None
    try:
        result = run_import(
            args.importer,
            args.source,
            args.output,
            options=options,
            label_sources=label_sources,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.stop()
    s = result.summary
    if args.json:
        print(json.dumps({"store": str(result.store), "images": result.images, "resumed": result.resumed,
                          "skipped": result.skipped, "seconds": round(result.seconds, 2), "summary": s}, indent=2))
        return 0
    points = ", ".join(f"{n:,} {name}" for name, n in s["points"].items()) or "none"
    splits = ", ".join(f"{name} {block['images']}" for name, block in s["splits"].items())
    groups = ", ".join(s["group_names"])
    print(
        f"imported {result.images} images ({s['instances']:,} instances; points: {points}; groups: {groups}; "
        f"splits: {splits}) into {result.store} in {result.seconds:.1f} s"
        + (f"; resumed {result.resumed} already written" if result.resumed else "")
    )
    if result.skipped:
        print(f"skipped {len(result.skipped)} image(s), see {result.report_path}:")
        for item in result.skipped[:20]:
            print(f"  {item['image_id']}: {item['error']}")
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from weakseg.data.store import open_store

    store = open_store(args.store)
    summary = store.summary()
    if args.images:
        summary["image_list"] = [
            {"image_id": i.image_id, "split": i.split, "group": i.group, "shape": list(i.shape),
             "instances": i.n_instances, "points": dict(i.n_points)}
            for i in store.images
        ]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{summary['store']}[/bold]: {summary['images']} images, {summary['instances']:,} instances, "
        f"channels {summary['channels']}, dtypes {', '.join(summary['dtypes'])}, "
        f"groups: {', '.join(summary['group_names'])}"
    )
    table = Table(title="per split", title_justify="left")
    for col in ("split", "images", "instances", "points", "groups", "sizes (HxW: n)"):
        table.add_column(col)
    for split, b in summary["splits"].items():
        table.add_row(
            split,
            str(b["images"]),
            f"{b['instances']:,}",
            ", ".join(f"{k} {v:,}" for k, v in b["points"].items()),
            ", ".join(f"{k} {v}" for k, v in b["groups"].items()),
            ", ".join(f"{k}: {v}" for k, v in list(b["sizes"].items())[:4]) + (" ..." if len(b["sizes"]) > 4 else ""),
        )
    console.print(table)
    if args.images:
        for item in summary["image_list"]:
            console.print(f"  {item['image_id']}  {item['split']}  {item['group']}  "
                          f"{item['shape']}  instances {item['instances']}  points {item['points']}")
    return 0


def _parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    from weakseg.errors import WeaksegError

    try:
        ys, xs = text.split(",")
        y0, y1 = (int(v) for v in ys.split(":"))
        x0, x1 = (int(v) for v in xs.split(":"))
    except ValueError:
        raise WeaksegError(f"--region {text!r}: expected Y0:Y1,X0:X1, e.g. 0:512,0:512") from None
    if min(y0, y1, x0, x1) < 0:
        raise WeaksegError(f"--region {text!r}: pixel bounds start at 0; expected Y0:Y1,X0:X1, e.g. 0:512,0:512")
    return y0, y1, x0, x1


def _cmd_show(args: argparse.Namespace) -> int:
    from weakseg.data.ingest import parse_label_sources
    from weakseg.data.overlay import check_png_target, save_png, store_overlay
    from weakseg.data.store import open_store

    check_png_target(args.output)
    region = _parse_region(args.region)
    store = open_store(args.store)
    label_source = None
    if args.label_source:
        sources = parse_label_sources([args.label_source])
        label_source = sources[0] if sources else None
    rgb = store_overlay(
        store,
        args.image,
        points_source=args.points,
        label_source=label_source,
        show_labels=not args.no_labels,
        region=region,
        max_size=args.max_size,
        annotated=args.annotated,
    )
    path = save_png(rgb, args.output)
    print(f"wrote {path} ({rgb.shape[1]}x{rgb.shape[0]})")
    return 0


def _cmd_region(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weakseg.data.regions import read_region_file
    from weakseg.data.store import open_store
    from weakseg.errors import DataError

    store = open_store(args.store)
    info = store.info(args.image)
    try:
        mask = read_region_file(args.file, info.shape[-2:])
        store.write_region(args.image, mask, {"file": str(Path(args.file).resolve())}, name=args.name)
    except DataError as exc:
        raise DataError(f"{args.file}: {exc}" if not str(exc).startswith(str(args.file)) else str(exc)) from None
    share = float(mask.mean())
    print(f"stored region {args.name!r} of image {args.image!r}: {share:.0%} of the image is annotated")
    return 0


class _Progress:
    """A rich progress bar fed by the writer's per-image callback (thread-safe)."""

    def __init__(self) -> None:
        import threading

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._lock = threading.Lock()
        self._progress = Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        )
        self._task = self._progress.add_task("import", total=None)
        self._progress.start()

    def __call__(self, image_id: str, status: str) -> None:
        with self._lock:
            self._progress.advance(self._task)

    def stop(self) -> None:
        self._progress.stop()
