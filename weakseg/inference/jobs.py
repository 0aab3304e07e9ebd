"""The work of ``weakseg predict``: predicting one image or a batch of small ones, writing the
outputs, and keeping the account of a run (what was predicted, what failed, what was warned about).

Every message about an image names its source; :class:`RunReport` prints each failure and warning
as it happens and writes all of them into the run's ``summary.json``, so nothing is lost from view
in a long run over a folder.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the :class:`~weakseg.inference.predictor.InputWarning` messages raised inside (into the
    yielded list, filled on exit); other warnings are passed on as usual."""
    from weakseg.inference.predictor import InputWarning

    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield messages
    for w in caught:
        if issubclass(w.category, InputWarning):
            messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _record(
    item: Any,
    shape: Any,
    table: Any,
    outputs: list[str],
    seconds: float,
    batch: int = 1,
    notes: list[str] | None = None,
    sizing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": item.name,
        "source": item.source,
        "shape": list(shape),
        **(sizing or {}),
        "cells": len(table.scores),
        "outputs": outputs,
        "seconds": round(seconds, 3),
        "batch": batch,
        "warnings": list(notes or []),
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
    """Predict one :class:`~weakseg.inference.io.InputImage` (tiled) and write the requested outputs;
    the record names the factor and cell diameter the image was predicted at."""
    start = time.perf_counter()
    with item.open() as view, collect_warnings() as notes:
        sized = predictor.for_image(view)
        labels, table = sized.predict_labels(view, progress=progress)
        outputs = write_outputs(item, view, labels, table, out_dir, formats, zarr_into_input=zarr_into_input)
        shape = view.shape
    seconds = time.perf_counter() - start
    return _record(item, shape, table, outputs, seconds, notes=notes, sizing=sized.sizing_info())


def predict_small_batch(
    predictor: Any,
    batch: list[tuple[Any, Any]],
    out_dir: Path,
    formats: tuple[str, ...],
    *,
    zarr_into_input: bool = False,
) -> list[dict[str, Any]]:
    """Predict equally shaped small images (``(item, array)`` pairs) in one forward pass, then write each."""
    from weakseg.inference.tiling import ChannelFirst

    start = time.perf_counter()
    with collect_warnings() as notes:  # each message names its image's source
        instances = predictor.predict_batch([ChannelFirst(array, "cyx", item.source) for item, array in batch])
    seconds = (time.perf_counter() - start) / len(batch)
    records = []
    for (item, array), inst in zip(batch, instances, strict=True):
        t0 = time.perf_counter()
        labels, table = predictor.labels_from_instances(inst)
        outputs = write_outputs(item, array, labels, table, out_dir, formats, zarr_into_input=zarr_into_input)
        mine = [m for m in notes if m.startswith(f"{item.source}:")]
        seconds_one = seconds + time.perf_counter() - t0
        sizing = predictor.sizing_info()
        records.append(_record(item, array.shape, table, outputs, seconds_one, len(batch), notes=mine, sizing=sizing))
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


WORKER_PREDICTORS: dict[str, Any] = {}


def remote_predict(
    checkpoint: str, options: dict[str, Any], item: Any, out_dir: str, formats: tuple[str, ...], zarr_into_input: bool
) -> dict[str, Any]:
    """Task run on a dask worker: the predictor is loaded once per worker process and reused."""
    from weakseg.inference.predictor import load_predictor

    key = json.dumps([checkpoint, options], sort_keys=True)
    if key not in WORKER_PREDICTORS:
        WORKER_PREDICTORS[key] = load_predictor(checkpoint, **options)
    return predict_one(WORKER_PREDICTORS[key], item, Path(out_dir), formats, zarr_into_input=zarr_into_input)


def failure_message(item_source: str, exc: BaseException) -> str:
    from weakseg.errors import WeaksegError

    if isinstance(exc, WeaksegError):
        text = str(exc)
        return text if item_source in text else f"{item_source}: {text}"
    return f"{item_source}: {type(exc).__name__}: {exc}"




Outcome = tuple[Any, dict[str, Any] | BaseException]


class RunReport:
    """The account of one prediction run: records of the predicted images, failures and warnings.

    Failures and warnings are printed to ``console`` as they come; :meth:`finish` writes
    ``summary.json`` and prints the closing lines.
    """

    def __init__(self, console: Any, advance: Any = None) -> None:
        self.console = console
        self.advance = advance or (lambda: None)
        self.done: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []

    def fail(self, source: str, message: str) -> None:
        self.failures.append({"source": source, "error": message})
        self.console.print(f"[red]error[/red]: {message}", highlight=False)

    def add(self, results: list[Outcome]) -> None:
        """Record what happened to some images (a record of each predicted one, or its exception)."""
        for item, outcome in results:
            if isinstance(outcome, BaseException):
                self.fail(item.source, failure_message(item.source, outcome))
            else:
                self.done.append(outcome)
                for note in outcome.get("warnings", []):
                    self.console.print(f"[yellow]warning[/yellow]: {note}", highlight=False)
            self.advance()

    def finish(self, checkpoint: str, out_dir: Path, seconds: float) -> int:
        """Write ``summary.json``, print the summary; the exit code (1 when anything failed)."""
        from weakseg.inference.export import atomic_file

        notes = [{"source": d["source"], "warning": n} for d in self.done for n in d.get("warnings", [])]
        summary = {
            "checkpoint": checkpoint,
            "predicted": self.done,
            "failed": self.failures,
            "warnings": notes,
            "seconds": round(seconds, 3),
        }
        with atomic_file(out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        cells = sum(d["cells"] for d in self.done)
        total = len(self.done) + len(self.failures)
        warned = f", {len(notes)} warning(s)" if notes else ""
        print(
            f"predicted {len(self.done)} of {total} image(s), {cells} cells{warned}, in {seconds:.1f} s; "
            f"outputs in {out_dir}",
            file=sys.stdout,
        )
        for note in notes:
            print(f"warning: {note['warning']}", file=sys.stderr)
        if self.failures:
            print(f"{len(self.failures)} failed:", file=sys.stderr)
            for f in self.failures:
                print(f"  {f['error']}", file=sys.stderr)
            return 1
        return 0
