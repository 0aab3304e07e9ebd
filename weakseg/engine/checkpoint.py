"""Checkpoints: one self-describing file that can rebuild, resume or serve a model.

A checkpoint is ``torch.save`` of a plain dict of tensors and primitives, so it loads with
``torch.load(weights_only=True)`` (no pickled classes, nothing executed on load)::

    format        "weakseg-checkpoint/1"
    weakseg       the writing weakseg version
    recipe        the resolved recipe as YAML text (rebuilds the strategy through the registries)
    data_summary  the DataSummary fields (in_channels, n_groups, group_names, has_masks)
    state_dict    strategy.state_dict()
    step          number of finished optimisation steps
    phase         the strategy phase at ``step``
    optimizer     optimizer.state_dict()           (absent for training-free strategies)
    scheduler     lr scheduler state_dict()        (idem)
    rng           one entry per rank: python, numpy, torch (and CUDA) generator states
    data          data position: {"step", "seed", "world_size"}; the loader restarts at ``step``
    tracking      {"run_id", "tracking_uri", "experiment_id"} of the MLflow run to continue
    input_scale   {"group_scales", "cell_diameter", "pixel_size"}: how training images were resized,
                  so that prediction on new images resizes them the same way (absent before 0.2)

Writes are atomic: the file is written beside its target under a temporary name, flushed to
disk and moved into place with :func:`os.replace`, so a crash never leaves a half-written
``last.ckpt``. :class:`CheckpointDir` keeps ``last.ckpt`` plus the newest ``step-NNNNNNNN.ckpt``
files (hard links to the same bytes, so the extra names cost no space).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from weakseg.components import DataSummary
from weakseg.errors import WeaksegError

FORMAT = "weakseg-checkpoint/1"
LAST = "last.ckpt"
_STEP_RE = re.compile(r"^step-(\d+)\.ckpt$")


class CheckpointError(WeaksegError):
    """A checkpoint file is missing, truncated or not a weakseg checkpoint."""


# ------------------------------------------------------------------------------------------------
# Random states (primitives and tensors only, so that weights_only loading accepts them)
# ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) generator states."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states written by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def summary_to_dict(summary: DataSummary) -> dict[str, Any]:
    return {
        "in_channels": int(summary.in_channels),
        "n_groups": int(summary.n_groups),
        "group_names": list(summary.group_names),
        "has_masks": bool(summary.has_masks),
    }


def summary_from_dict(data: Mapping[str, Any]) -> DataSummary:
    return DataSummary(
        in_channels=int(data["in_channels"]),
        n_groups=int(data.get("n_groups", 1)),
        group_names=tuple(data.get("group_names", ("all",))),
        has_masks=bool(data.get("has_masks", False)),
    )


def make_payload(
    *,
    recipe_yaml: str,
    data_summary: DataSummary,
    state_dict: Mapping[str, Any],
    step: int,
    phase: str = "main",
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    rng: list[dict[str, Any]] | None = None,
    data: Mapping[str, Any] | None = None,
    tracking: Mapping[str, Any] | None = None,
    input_scale: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring); ``None`` entries are left out."""
    from weakseg import __version__

    payload: dict[str, Any] = {
        "format": FORMAT,
        "weakseg": __version__,
        "recipe": recipe_yaml,
        "data_summary": summary_to_dict(data_summary),
        "state_dict": dict(state_dict),
        "step": int(step),
        "phase": phase,
    }
    for key, value in (
        ("optimizer", optimizer),
        ("scheduler", scheduler),
        ("rng", rng),
        ("data", data),
        ("tracking", tracking),
        ("input_scale", input_scale),
    ):
        if value is not None:
            payload[key] = value
    return payload


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file + fsync + :func:`os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(dict(payload), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same bytes as ``src`` atomically (a hard link when possible)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@attrs.define
class CheckpointDir:
    """``<run>/checkpoints``: ``last.ckpt`` plus the newest ``keep`` step-numbered snapshots."""

    path: Path
    keep: int = 3

    @property
    def last(self) -> Path:
        return self.path / LAST

    def step_path(self, step: int) -> Path:
        return self.path / f"step-{step:08d}.ckpt"

    def step_files(self) -> list[tuple[int, Path]]:
        if not self.path.is_dir():
            return []
        found = []
        for p in self.path.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, payload: Mapping[str, Any], step: int) -> Path:
        """Write ``step-N.ckpt`` (if keeping snapshots) and make ``last.ckpt`` point at the same bytes."""
        if self.keep <= 0:
            return save_checkpoint(payload, self.last)
        target = save_checkpoint(payload, self.step_path(step))
        _link_or_copy(target, self.last)
        _fsync_dir(self.path)
        for _, old in self.step_files()[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return self.last


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _read_raw(path: Path) -> dict[str, Any]:
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CheckpointError(f"{path}: a folder without checkpoints/{LAST}; pass a .ckpt file or a run folder")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found (runs write <output.dir>/<recipe name>/checkpoints/{LAST})"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: not loadable with weights_only=True (not written by weakseg, or holds pickled objects): {exc}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: not a weakseg checkpoint (format {found!r}, expected {FORMAT!r})")
    return raw


@attrs.frozen
class Checkpoint:
    """A loaded checkpoint: the validated recipe, data summary, weights, step and the raw dict."""

    path: Path
    recipe: Any  # weakseg.recipe.Recipe
    recipe_yaml: str
    data_summary: DataSummary
    state_dict: dict[str, Any]
    step: int
    raw: dict[str, Any]

    @property
    def run_id(self) -> str | None:
        """The MLflow run this checkpoint belongs to (if it was tracked)."""
        return (self.raw.get("tracking") or {}).get("run_id")

    @property
    def input_scale(self) -> dict[str, Any] | None:
        """How the training images were resized (``weakseg.data.dataset.input_scale_info``), if recorded."""
        value = self.raw.get("input_scale")
        return dict(value) if value else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint file (or a run folder's ``checkpoints/last.ckpt``) with ``weights_only=True``.

    The stored recipe is validated against the installed plugins; a checkpoint whose strategy comes
    from a plugin that is not installed raises a :class:`~weakseg.errors.RecipeError` naming it.
    """
    from weakseg.recipe import recipe_from_yaml_text

    path = Path(path)
    raw = _read_raw(path)
    recipe = recipe_from_yaml_text(raw["recipe"], origin=f"{path} (stored recipe)")
    return Checkpoint(
        path=path,
        recipe=recipe,
        recipe_yaml=raw["recipe"],
        data_summary=summary_from_dict(raw["data_summary"]),
        state_dict=raw["state_dict"],
        step=int(raw["step"]),
        raw=raw,
    )


def load_strategy(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Checkpoint]:
    """Rebuild the checkpoint's strategy through the registries, load its weights, eval mode."""
    from weakseg.build import build_strategy

    ckpt = load_checkpoint(path)
    strategy = build_strategy(ckpt.recipe, ckpt.data_summary)
    try:
        strategy.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the weights do not fit strategy {ckpt.recipe.strategy.type!r} as built by the installed "
            f"plugins (was the plugin changed since training?): {exc}"
        ) from None
    strategy.to(device)
    strategy.eval()
    return strategy, ckpt
