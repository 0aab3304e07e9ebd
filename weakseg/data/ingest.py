"""``weakseg data import``: run an importer and write a store (in parallel, resumable, reporting bad input)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from weakseg.errors import DataError


@attrs.frozen
class ImportResult:
    """What an import did: counts, the skipped images with reasons, wall time."""

    store: Path
    images: int
    resumed: int
    skipped: list[dict[str, str]]
    seconds: float
    summary: dict[str, Any]

    @property
    def report_path(self) -> Path | None:
        from weakseg.data.store import REPORT_NAME

        path = self.store / REPORT_NAME
        return path if path.exists() else None


def build_importer(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """An importer from its registered name and options (validated like a recipe section)."""
    from weakseg.recipe import ImporterSpec, structure

    spec = structure({"type": name, **dict(options or {})}, ImporterSpec, root="importer")
    return spec, spec.build()


def parse_label_sources(items: Sequence[Any] | None) -> list[Any] | None:
    """``--label-source`` values: names or YAML mappings (``{type: nuclei, diameter: 20}``); none = auto."""
    if not items:
        return None
    import yaml

    from weakseg.data.labels import resolve_label_source
    from weakseg.errors import RecipeError

    out = []
    for item in items:
        value = item
        if isinstance(item, str) and item.strip().startswith("{"):
            try:
                value = yaml.safe_load(item)
            except yaml.YAMLError as exc:
                raise RecipeError(f"--label-source {item!r}: not valid YAML: {exc}") from None
        if value in ("auto", "none"):
            return None if value == "auto" else []
        out.append(resolve_label_source(value))
    return out


def run_import(
    importer: str | Any,
    source: str | Path,
    store: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    label_sources: Sequence[Any] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> ImportResult:
    """Import ``source`` with an importer (registered name + ``options``, or a built importer) into ``store``.

    Re-running the same command after an interruption resumes: images already written are kept.
    """
    from weakseg.data.labels import _config_dict, source_name
    from weakseg.data.store import StoreWriter

    t0 = time.perf_counter()
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise DataError(f"--workers {workers!r}: the number of parallel image writers must be a positive integer")
    if isinstance(importer, str):
        spec, imp = build_importer(importer, options)
        importer_desc = {"type": spec.type, **_config_dict(spec.config)}
    else:
        imp = importer
        importer_desc = {"type": getattr(imp, "name", type(imp).__name__), **_config_dict(imp)}
    source = Path(source)
    if not source.exists() and not getattr(imp, "downloads_into_source", False):
        raise DataError(f"{source}: not found (the import source must be a folder or file)")
    records = list(imp.scan(source))
    if not records:
        raise DataError(f"{source}: the importer found no images")
    label_desc = None if label_sources is None else [
        {"type": source_name(s), **_config_dict(s)} for s in label_sources
    ]
    fingerprint = {
        "importer": importer_desc,
        "source": str(source.resolve()),
        "label_sources": label_desc,
        "images": len(records),
    }
    writer = StoreWriter(store, overwrite=overwrite, fingerprint=fingerprint)
    try:
        skipped = writer.add_all(
            records, label_sources=label_sources, skip_bad=skip_bad, workers=workers, progress=progress
        )
    except Exception:
        if writer.n_written == 0:  # nothing to resume: a fresh run does the same work
            writer.remove_unfinished()
        raise
    if writer.n_written == 0:  # every image was skipped: leave no half-made store behind
        writer.remove_unfinished()
        raise DataError(_nothing_imported_message(source, Path(store), skipped))
    result_store = writer.close(
        extra={"importer": importer_desc, "source": str(source.resolve()), "label_sources": label_desc},
        skipped=skipped,
    )
    return ImportResult(
        store=Path(store),
        images=len(result_store.images),
        resumed=len(writer.resumed),
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        summary=result_store.summary(),
    )


def _nothing_imported_message(source: Path, store: Path, skipped: Sequence[Mapping[str, str]]) -> str:
    shown = "\n".join(f"  {item['image_id']}: {item['error']}" for item in skipped[:5])
    more = f"\n  ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return (
        f"{source}: none of its {len(skipped)} image(s) could be imported, so no store was written at {store}; "
        f"fix the files (or the importer options) and run the import again:\n{shown}{more}"
    )


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
