"""Making sure a recipe's store exists before training or evaluation starts."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import attrs

from weakseg.errors import DataError
from weakseg.recipe import DataConfig


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside the store, so that DDP ranks generate a synthetic store only once."""
    lock_file = path.parent / f".{path.name}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _synthetic_matches(path: Path, want: dict) -> bool | None:
    """True/False when ``path`` is a complete synthetic store made with/without ``want``; None otherwise."""
    from weakseg.data.store import _read_root_meta

    meta = _read_root_meta(path)
    if not meta or not meta.get("complete"):
        return None
    have = meta.get("synthetic")
    if have is None:
        return None
    return have == want


def ensure_store(cfg: DataConfig) -> Path:
    """The store path of ``cfg``; a missing (or stale, or unfinished) synthetic store is generated first.

    Without ``cfg.synthetic`` a missing or incomplete store is a :class:`DataError` saying how to make it.
    A synthetic store whose generator settings differ from ``cfg.synthetic`` is regenerated (it is demo
    data that weakseg made itself); any other existing folder is never touched.
    """
    from weakseg.data.store import _read_root_meta, open_store

    path = Path(cfg.store)
    if cfg.synthetic is None:
        open_store(path)  # raises a DataError naming the path and the fix
        return path
    want = attrs.asdict(cfg.synthetic)
    if _synthetic_matches(path, want):
        return path
    with _lock(path):
        if _synthetic_matches(path, want):
            return path  # another process made it meanwhile
        meta = _read_root_meta(path) if path.exists() else None
        ours = meta is not None and ("synthetic" in meta or "synthetic" in meta.get("fingerprint", {}))
        if path.exists() and any(path.iterdir()) and not ours:
            raise DataError(
                f"{path}: exists and is not a synthetic weakseg store; remove data.synthetic from the recipe "
                "to use it, or point data.store elsewhere"
            )
        # a stale complete store or an unfinished one of other settings is replaced; the same unfinished one resumes
        overwrite = ours and (bool(meta.get("complete")) or meta.get("fingerprint", {}).get("synthetic") != want)
        from weakseg.data.synthetic import write_synthetic_store

        write_synthetic_store(path, cfg.synthetic, overwrite=overwrite)
    return path
