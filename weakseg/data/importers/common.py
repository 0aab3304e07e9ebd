"""What every importer shares: file templates, image ids, groups, split rules, metadata tables.

Split rules (so that held-out test sets are easy to express, e.g. Usiigaci sets 31-40)::

    --set 'splits.test=set(3[1-9]|40)'        # regex, full match on the image id (or relative path)
    --set val_fraction=0.2 --set split_seed=0 # seeded fraction of the remaining train images, per group

Groups (the collaborator of the CKS paper keeps one output channel per cell line)::

    --set group=HeLa                           # one constant group
    --set 'group_pattern=^([^_]+)_'            # first capture group of a regex searched in the relative path
"""

from __future__ import annotations

import csv
import glob
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import attrs
import numpy as np

from weakseg.errors import DataError

GLOB_CHARS = set("*?[")


def _check_regex(_inst: Any, attribute: Any, value: Any) -> None:
    patterns = value.values() if isinstance(value, Mapping) else [value]
    for p in patterns:
        if p is None:
            continue
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"{attribute.name}: invalid regular expression {p!r}: {exc}") from None


@attrs.frozen(kw_only=True)
class CommonOptions:
    """Options every importer accepts: groups, splits, pixel size, image ids."""

    #: Group (e.g. cell line) of every image unless group_pattern matches.
    group: str = "all"
    #: Regex searched in the image's relative path; its first capture group (or the match) is the group.
    group_pattern: str | None = attrs.field(default=None, validator=_check_regex)
    #: split name -> regex; an image whose id (or relative path) fully matches goes to that split.
    splits: dict[str, str] = attrs.field(factory=dict, validator=_check_regex)
    #: Fractions of the remaining train images moved to val / test, drawn per group with split_seed.
    val_fraction: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    test_fraction: float = attrs.field(default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    split_seed: int = 0
    #: Physical pixel size in micrometres (metadata only).
    pixel_size: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    #: How image ids are made: auto (file stem, else parent folder, else relative path), stem, parent, path.
    id: Literal["auto", "stem", "parent", "path"] = "auto"


def posix_rel(path: Path, root: Path) -> str:
    return PurePosixPath(path.relative_to(root)).as_posix()


def template_fields(rel: str) -> dict[str, str]:
    p = PurePosixPath(rel)
    stem = p.name.split(".")[0] if p.suffix else p.name
    return {"stem": stem, "name": p.name, "parent": p.parent.as_posix(), "suffix": p.suffix}


class _TemplateFormatter(string.Formatter):
    """``{stem:img=masks}`` replaces ``img`` by ``masks`` in the field (A431: img_0001 -> masks_0001)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if "=" in format_spec:
            old, new = format_spec.split("=", 1)
            return str(value).replace(old, new)
        return super().format_field(value, format_spec)


def format_template(template: str, rel: str) -> str:
    return _TemplateFormatter().format(template, **template_fields(rel))


def resolve_template(root: Path, template: str, rel: str, *, what: str, image: Path) -> Path | None:
    """The file a template names for one image (``{stem}``, ``{name}``, ``{parent}``, ``{suffix}``; globs ok).

    ``{stem:old=new}`` replaces text in a field. Returns None when nothing matches; more than one match is
    an error naming the candidates.
    """
    try:
        name = format_template(template, rel)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(
            f"{what} template {template!r}: unknown field {exc}; use {{stem}}, {{name}}, {{parent}}, {{suffix}}"
        ) from None
    candidate = Path(name) if Path(name).is_absolute() else root / name
    if not GLOB_CHARS & set(name):
        return candidate if candidate.is_file() else None
    matches = sorted(Path(p) for p in glob.glob(str(candidate)) if Path(p).is_file() and Path(p) != image)
    if not matches:
        return None
    if len(matches) > 1:
        listed = ", ".join(str(m) for m in matches[:4])
        raise DataError(f"{image}: the {what} template {template!r} matches {len(matches)} files ({listed}); make it "
                        "more specific")
    return matches[0]


def find_files(root: Path, pattern: str, *, suffixes: Sequence[str] | None = None) -> list[Path]:
    """Files under ``root`` matching a glob (``**`` recurses), sorted, hidden files left out."""
    from weakseg.data.readers import IMAGE_SUFFIXES

    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    if not pattern or Path(pattern).is_absolute():
        raise DataError(
            f"{root}: file pattern {pattern!r} must be a non-empty glob relative to the import source "
            "(e.g. --set images='images/*.tif')"
        )
    try:
        matches = sorted(root.glob(pattern))
    except (ValueError, NotImplementedError) as exc:
        raise DataError(f"{root}: invalid file pattern {pattern!r} ({exc}); e.g. --set images='images/*.tif'") from None
    out = []
    for p in matches:
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if suffixes and p.suffix.lower() not in suffixes:
            continue
        out.append(p)
    return out


def make_ids(rels: Sequence[str], mode: str) -> list[str]:
    """Image ids from relative paths; ``auto`` picks the shortest unique scheme."""

    def by(scheme: str) -> list[str]:
        ids = []
        for rel in rels:
            p = PurePosixPath(rel)
            if scheme == "stem":
                ids.append(template_fields(rel)["stem"])
            elif scheme == "parent":
                ids.append(p.parent.name or template_fields(rel)["stem"])
            else:
                ids.append(str(p.with_suffix("")).replace("/", "__"))
        return ids

    if mode != "auto":
        return by(mode)
    for scheme in ("stem", "parent", "path"):
        ids = by(scheme)
        if len(set(ids)) == len(ids):
            return ids
    return by("path")


def group_for(rel: str, options: CommonOptions, metadata: Mapping[str, Any] | None = None,
              column: str | None = None) -> str:
    if column:
        value = (metadata or {}).get(column)
        if value not in (None, ""):
            return str(value)
    if options.group_pattern:
        m = re.search(options.group_pattern, rel)
        if m:
            return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
    return options.group


def assign_splits(records: list[Any], options: CommonOptions, rels: Mapping[str, str] | None = None) -> list[Any]:
    """Apply ``splits`` regexes, then move seeded fractions of the remaining train images per group."""
    rels = rels or {}
    out = []
    ruled: set[str] = set()
    for r in records:
        split = r.split
        for name, pattern in options.splits.items():
            if re.fullmatch(pattern, r.image_id) or (r.image_id in rels and re.fullmatch(pattern, rels[r.image_id])):
                split = name
                ruled.add(r.image_id)
                break
        out.append(attrs.evolve(r, split=split))
    if options.val_fraction or options.test_fraction:
        if options.val_fraction + options.test_fraction > 1:
            raise DataError("val_fraction + test_fraction must not exceed 1")
        by_group: dict[str, list[int]] = {}
        for k, r in enumerate(out):
            if r.split == "train" and r.image_id not in ruled:
                by_group.setdefault(r.group, []).append(k)
        for group, idx in sorted(by_group.items()):
            idx = sorted(idx, key=lambda k: out[k].image_id)
            rng = np.random.default_rng([options.split_seed, _stable(group)])
            perm = [idx[i] for i in rng.permutation(len(idx))]
            n_val = int(round(options.val_fraction * len(perm)))
            n_test = int(round(options.test_fraction * len(perm)))
            for k in perm[:n_val]:
                out[k] = attrs.evolve(out[k], split="val")
            for k in perm[n_val : n_val + n_test]:
                out[k] = attrs.evolve(out[k], split="test")
    return out


def _stable(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def sniff_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV/TSV file (delimiter sniffed: ``,``, ``;`` or tab) as dicts of strings."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return rows


def load_metadata_table(root: Path, spec: str | None, keys: Iterable[str]) -> tuple[dict[str, dict[str, str]], str]:
    """Per-image metadata from a CSV whose first column names the image (file stem or id).

    ``spec`` is a path (relative to ``root``), ``"auto"`` (the one CSV in ``root`` whose first column covers
    at least half the images) or None. Returns (image key -> row, file used or "").
    """
    if spec is None:
        return {}, ""
    keys = set(keys)
    candidates = sorted(root.glob("*.csv")) if spec == "auto" else [root / spec]
    for path in candidates:
        if not path.is_file():
            if spec != "auto":
                raise DataError(f"{path}: metadata CSV not found")
            continue
        rows = sniff_table(path)
        if not rows:
            continue
        first = next(iter(rows[0]))
        table = {row[first]: row for row in rows if row.get(first)}
        if spec != "auto" or (keys and len(keys & set(table)) >= max(1, len(keys) // 2)):
            return table, str(path)
    return {}, ""
