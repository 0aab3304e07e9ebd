"""The runtime contracts between the engine and the plugins (torch-free; see also weakseg.strategy).

Keep these three apart (DESIGN.md): the **engine** owns the loop, devices, precision, distribution,
checkpoints and logging; a **strategy** owns the models it trains and turns a :class:`Batch` into
named losses; a **principal model** turns an image into :class:`~weakseg.nn.instances.Instances`
and knows nothing of how it is trained.

Conventions: coordinates are (y, x) with pixel centres at i + 0.5; images are (C, H, W) float32.
Torch is imported lazily so that ``weakseg plugins`` and recipe checks stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from weakseg.nn.instances import Instances


@attrs.define
class Batch:
    """A training batch as the data layer hands it to ``Strategy.forward``.

    ``points[b]`` is a float tensor (N_b, 2) of (y, x) pixel coordinates in the crop
    (N_b may be 0); ``masks[b]`` is an int64 (H, W) instance label image or ``None`` when that
    image has no masks (point supervision). ``group`` is the group (cell line) index per image.
    ``annotated`` (B, H, W) float32 is 1 where the crop's points are complete and 0 where cells may
    lack a point; None when every crop is annotated everywhere.
    """

    image: torch.Tensor  # (B, C, H, W) float32, standardised per image
    points: list[torch.Tensor]
    masks: list[torch.Tensor | None]
    group: torch.Tensor  # (B,) int64
    image_ids: list[str] = attrs.field(factory=list)
    annotated: torch.Tensor | None = None

    @property
    def has_masks(self) -> list[bool]:
        return [m is not None for m in self.masks]

    def to(self, device: Any) -> Batch:
        return Batch(
            image=self.image.to(device, non_blocking=True),
            points=[p.to(device) for p in self.points],
            masks=[None if m is None else m.to(device) for m in self.masks],
            group=self.group.to(device),
            image_ids=list(self.image_ids),
            annotated=None if self.annotated is None else self.annotated.to(device, non_blocking=True),
        )


@attrs.frozen
class Phase:
    """A named stretch of training, starting at ``start`` (a step index), e.g. CKS warm-up."""

    name: str
    start: int = 0


@attrs.frozen
class DataSummary:
    """What a strategy may know about the training data when it is built."""

    in_channels: int
    n_groups: int = 1
    group_names: tuple[str, ...] = ("all",)
    has_masks: bool = False


@runtime_checkable
class PrincipalModel(Protocol):
    """image batch (B, C, H, W) -> one :class:`Instances` per image (``predict``), eval mode."""

    def predict(self, image: torch.Tensor) -> list[Instances]: ...


@attrs.frozen
class ImageRecord:
    """One image an importer found: arrays are loaded lazily through the callables.

    A loader may return a numpy array or a lazy array-like (``shape``, ``dtype`` and slicing: a
    tifffile/zarr view or a dask array), so that images larger than memory are written region by region.
    """

    image_id: str
    source: str  # original file(s), for messages and metadata
    load_image: Any  # () -> np.ndarray (C, Y, X)
    load_labels: Any = None  # () -> np.ndarray (Y, X) int, or None
    load_points: Any = None  # () -> np.ndarray (N, 2) float (y, x), or None
    load_nuclei: Any = None  # () -> np.ndarray (Y, X), a nuclear-stain image, or None
    group: str = "all"
    split: str = "train"
    pixel_size: float | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class Importer(Protocol):
    """Finds images (and masks / points) in user data; ``weakseg data import`` writes them."""

    def scan(self, source: Path) -> Iterable[ImageRecord]: ...


@runtime_checkable
class LabelSource(Protocol):
    """Makes point labels (N, 2) float (y, x) for one image from what the store holds."""

    name: str

    def points(
        self,
        *,
        image: np.ndarray,
        labels: np.ndarray | None,
        points: np.ndarray | None,
        nuclei: np.ndarray | None,
        rng: np.random.Generator,
    ) -> np.ndarray: ...


def as_points(array: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Coerce to a float32 (N, 2) array of (y, x) points (N may be 0)."""
    pts = np.asarray(array, dtype=np.float32)
    if pts.size == 0:
        return np.zeros((0, 2), np.float32)
    return pts.reshape(-1, 2)
