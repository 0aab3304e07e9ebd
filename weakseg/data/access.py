"""A recipe's store and its images: where the store is, which images a split selects, what they hold.

Shared by the scale (:mod:`weakseg.data.scales`), evaluation (:mod:`weakseg.data.evalimages`) and
training (:mod:`weakseg.data.loader`) code; :func:`data_summary` is what a strategy may know about
the training split before it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weakseg.components import DataSummary
from weakseg.errors import DataError
from weakseg.recipe import DataConfig


def store_path(cfg: DataConfig) -> Path:
    """The store of ``cfg``, generated first when it is synthetic and missing."""
    if cfg.synthetic is None:
        return Path(cfg.store)  # open_store names the path when it is missing or incomplete
    from weakseg.data.prepare import ensure_store

    return Path(ensure_store(cfg))


def open_data_store(path: Path | str) -> Any:
    """The complete store at ``path`` (a DataError names it when missing or unfinished)."""
    from weakseg.data.store import open_store

    return open_store(path)


def select_images(store: Any, split: str, groups: Sequence[str]) -> list[Any]:
    """The images of ``split`` whose group is in ``groups`` (all groups when empty), in store order."""
    return list(store.select(split=split, groups=tuple(groups)))


def data_summary(cfg: DataConfig) -> DataSummary:
    """What a strategy may know about the training split: channels, groups, whether masks exist."""
    path = store_path(cfg)
    store = open_data_store(path)
    infos = select_images(store, cfg.train_split, cfg.groups)
    if not infos:
        raise DataError(no_images_message(path, store, cfg.train_split, cfg.groups))
    channels = sorted({int(info.shape[0]) for info in infos})
    if len(channels) != 1:
        raise DataError(
            f"{path}: the {cfg.train_split!r} images have different channel counts {channels}; "
            "import them into separate stores or give them the same channels"
        )
    groups = tuple(store.groups) or ("all",)
    return DataSummary(
        in_channels=channels[0],
        n_groups=len(groups),
        group_names=groups,
        has_masks=all(bool(info.has_labels) for info in infos),
    )


def no_images_message(path: Path, store: Any, split: str, groups: Sequence[str]) -> str:
    """Why a split selects no image: the splits and groups the store has, and the recipe keys to check."""
    splits = sorted({info.split for info in store.images})
    where = f" of groups {list(groups)}" if groups else ""
    return (
        f"{path}: no images in split {split!r}{where} (the store has splits {splits} and groups "
        f"{list(store.groups)}); check data.train_split / data.val_split / data.groups in the recipe"
    )


_DIAMETER_CACHE: dict[tuple[Any, ...], dict[str, tuple[str, float]]] = {}
