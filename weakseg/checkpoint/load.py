"""Reading a checkpoint: the one loader behind ``--resume``, ``model.init_from``, ``weakseg evaluate``,
``weakseg predict`` and ``weakseg.load``.

Whatever goes wrong with the file (missing, damaged, not a torch file, holding pickled classes,
lacking entries) ends as one :class:`~weakseg.checkpoint.files.CheckpointError` naming the file;
the CLI prints it and exits with code 2. Files are only ever read with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

from weakseg.checkpoint.files import LAST, CheckpointError, read_pointer, verify_file, zip_problem
from weakseg.checkpoint.payload import FORMAT, missing_entries, summary_from_dict
from weakseg.components import DataSummary

#: What a torch file starts with: a zip archive (torch >= 1.6) or the legacy pickle stream.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_USE_A_RUN = "use a checkpoint written by `weakseg run` (<run>/checkpoints/ or the run folder)"


def _torch_load(path: Path, *, check_zip: bool) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a :class:`CheckpointError`.

    ``check_zip`` first checks every zip member's CRC: for files without a size + sha256 record.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(_TORCH_MAGIC):
        what = "an empty file" if not head else f"not a file written by torch.save; it starts {head!r}"
        raise CheckpointError(path, f"not a weakseg checkpoint ({what})", _USE_A_RUN)
    if check_zip and head.startswith(b"PK"):
        problem = zip_problem(path)
        if problem:
            raise CheckpointError(path, f"damaged ({problem})", _USE_A_RUN)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = sorted(set(_GLOBAL_RE.findall(str(exc))))
        what = f" ({', '.join(found)})" if found else ""
        raise CheckpointError(
            path,
            f"not a weakseg checkpoint: it holds pickled Python objects{what}, which weakseg never writes; "
            "weakseg reads checkpoints with weights_only=True only and will not load this file unsafely, "
            "since unpickling it could run arbitrary code",
            _USE_A_RUN,
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch reports a cut or garbled file in many ways
        raise CheckpointError(
            path, f"unreadable (truncated or corrupt: {type(exc).__name__}: {str(exc)[:200]})", _USE_A_RUN
        ) from None


def read_checkpoint_file(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the file read, its checked dict) for a checkpoint file or a ``last.ckpt`` pointer.

    Checks, in order: the file exists; its size and sha256 match its record (a file without one,
    e.g. copied alone, passes the zip CRC check instead); a pointer names an existing snapshot
    (which is then checked the same way); torch can read it with ``weights_only=True``; the format
    tag; the entries every reader needs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found", f"runs write <output.dir>/<recipe name>/checkpoints/{LAST}")
    record = verify_file(path)
    target = read_pointer(path)
    if target is not None:
        if not target.is_file():
            raise CheckpointError(path, f"points to {target.name}, which is gone", "pass the run folder instead")
        record = verify_file(target)
    else:
        target = path
    raw = _torch_load(target, check_zip=record is None)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(target, f"not a weakseg checkpoint (format {found!r}, expected {FORMAT!r})", _USE_A_RUN)
    problems = missing_entries(raw)
    if problems:
        raise CheckpointError(
            target,
            f"an incomplete weakseg checkpoint ({'; '.join(problems)})",
            "it was not written by `weakseg run`; use another checkpoint, e.g. an earlier step-NNNNNNNN.ckpt",
        )
    return target, raw


@attrs.frozen
class Checkpoint:
    """A loaded checkpoint: the validated recipe, data summary, weights, step and the raw dict.

    ``path`` is the path asked for (a run folder resolves to its chosen snapshot); ``file`` is the
    file whose bytes were read (the snapshot a ``last.ckpt`` pointer names).
    """

    path: Path
    recipe: Any  # weakseg.recipe.Recipe
    recipe_yaml: str
    data_summary: DataSummary
    state_dict: dict[str, Any]
    step: int
    raw: dict[str, Any]
    file: Path | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run this checkpoint belongs to (if it was tracked)."""
        return (self.raw.get("tracking") or {}).get("run_id")

    @property
    def input_scale(self) -> dict[str, Any] | None:
        """How the training images were resized (``weakseg.data.scales.InputScale.to_dict``), if recorded."""
        value = self.raw.get("input_scale")
        return dict(value) if value else None

    @property
    def size_model(self) -> dict[str, Any] | None:
        """The size model (``weakseg.inference.sizing.SizeModel.to_dict``), if the checkpoint has one."""
        value = self.raw.get("size_model")
        return dict(value) if value else None


def checkpoint_from_file(path: str | Path) -> Checkpoint:
    """Load one checkpoint file (or ``last.ckpt`` pointer), checked, with its recipe validated."""
    from weakseg.recipe import recipe_from_yaml_text

    path = Path(path)
    file, raw = read_checkpoint_file(path)
    recipe = recipe_from_yaml_text(raw["recipe"], origin=f"{file} (stored recipe)")
    try:
        summary = summary_from_dict(raw["data_summary"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(file, f"an incomplete weakseg checkpoint (data_summary: {exc})") from None
    return Checkpoint(
        path=path,
        recipe=recipe,
        recipe_yaml=raw["recipe"],
        data_summary=summary,
        state_dict=dict(raw["state_dict"]),
        step=int(raw["step"]),
        raw=raw,
        file=file,
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint file, a ``last.ckpt`` pointer, or a run folder's newest good snapshot.

    Always with ``weights_only=True``. The stored recipe is validated against the installed
    plugins; a checkpoint whose strategy comes from a plugin that is not installed raises a
    :class:`~weakseg.errors.RecipeError` naming it. A run folder (or its ``checkpoints/``) whose
    newest snapshots are damaged yields the newest one that verifies, with a warning naming the
    skipped ones.
    """
    from weakseg.checkpoint.folder import CheckpointDir

    path = Path(path)
    if not path.is_dir():
        return checkpoint_from_file(path)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = CheckpointDir(folder).newest_good()
    if found.checkpoint is None:
        if not found.skipped:
            what = f"a folder without checkpoints ({LAST} or step-NNNNNNNN.ckpt)"
            raise CheckpointError(path, what, "pass a .ckpt file or a run folder")
        raise CheckpointError(folder, f"no snapshot can be read ({found.describe_skipped()})")
    if found.skipped:
        warnings.warn(f"{folder}: {found.summary('loading')}", stacklevel=2)
    return found.checkpoint


def load_strategy(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Checkpoint]:
    """Rebuild the checkpoint's strategy through the registries, load its weights, eval mode."""
    from weakseg.build import build_strategy

    ckpt = load_checkpoint(path)
    strategy = build_strategy(ckpt.recipe, ckpt.data_summary)
    try:
        strategy.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            ckpt.file or path,
            f"the weights do not fit strategy {ckpt.recipe.strategy.type!r} as built by the installed plugins",
            f"was the plugin changed since training? ({str(exc)[:300]})",
        ) from None
    strategy.to(device)
    strategy.eval()
    return strategy, ckpt
