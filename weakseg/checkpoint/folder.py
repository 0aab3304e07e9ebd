"""A run's ``checkpoints/`` folder: step snapshots, the ``last.ckpt`` pointer, the newest good snapshot.

::

    checkpoints/
      step-00000020.ckpt               a snapshot (the newest ``keep`` are kept)
      step-00000020.ckpt.sha256.json   its size and sha256
      step-00000030.ckpt  (+ record)
      last.ckpt                        pointer: {"format": ..., "file": "step-00000030.ckpt", "step": 30}
      damaged/                         snapshots found damaged when a run resumed (moved, never deleted)

``--resume`` takes :meth:`CheckpointDir.newest_good`: the newest snapshot whose size, sha256 and
content check out, whatever ``last.ckpt`` says (it may be damaged or deleted).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from weakseg.checkpoint.files import (
    LAST,
    CheckpointError,
    fsync_dir,
    read_pointer,
    record_path,
    save_checkpoint,
    write_pointer,
)

_STEP_RE = re.compile(r"^step-(\d+)\.ckpt$")
DAMAGED = "damaged"


@attrs.frozen
class Found:
    """What :meth:`CheckpointDir.newest_good` found: the checkpoint (or ``None``) and what it skipped."""

    checkpoint: Any  # weakseg.checkpoint.load.Checkpoint | None
    skipped: tuple[tuple[Path, str], ...] = ()
    pointer_problem: str | None = None

    def describe_skipped(self) -> str:
        """``step-00000030.ckpt is damaged (size 1234 != 5678 recorded); ...``"""
        return "; ".join(f"{path.name} is {reason}" for path, reason in self.skipped)

    def summary(self, verb: str = "resuming") -> str:
        """One line for the user: what was skipped and why, and which snapshot is used."""
        parts = [f"{LAST} is {self.pointer_problem}"] if self.pointer_problem else []
        if self.skipped:
            parts.append(self.describe_skipped())
        if self.checkpoint is None:
            parts.append("no snapshot is usable")
        else:
            parts.append(f"{verb} from {(self.checkpoint.file or self.checkpoint.path).name}")
        return "; ".join(parts)


@attrs.define
class CheckpointDir:
    """``<run>/checkpoints``: the newest ``keep`` step snapshots and the ``last.ckpt`` pointer.

    ``keep=0`` keeps no snapshots: ``last.ckpt`` is then the checkpoint itself.
    """

    path: Path
    keep: int = 3

    @property
    def last(self) -> Path:
        return self.path / LAST

    def step_path(self, step: int) -> Path:
        return self.path / f"step-{step:08d}.ckpt"

    def step_files(self) -> list[tuple[int, Path]]:
        """(step, path) of the snapshots, oldest first."""
        if not self.path.is_dir():
            return []
        found = []
        for p in self.path.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def has_checkpoints(self) -> bool:
        """True when the folder holds a snapshot or a ``last.ckpt`` (of whichever run)."""
        return self.last.exists() or bool(self.step_files())

    # -- writing ---------------------------------------------------------------------------------

    def save(self, payload: Mapping[str, Any], step: int) -> Path:
        """Write ``step-N.ckpt`` (with its record), point ``last.ckpt`` at it, drop the oldest snapshots.

        Returns ``last.ckpt``, the name that always means the newest checkpoint.
        """
        if self.keep <= 0:
            return save_checkpoint(payload, self.last)
        target = save_checkpoint(payload, self.step_path(step))
        write_pointer(self.last, target, step)
        fsync_dir(self.path)
        for _, old in self.step_files()[: -self.keep]:
            if old != target:
                self._remove(old)
        return self.last

    @staticmethod
    def _remove(path: Path) -> None:
        for p in (path, record_path(path)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def move_aside(self) -> Path | None:
        """Rename the folder to ``checkpoints.old-<UTC time>`` (nothing is deleted); returns the new path."""
        if not self.path.exists():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.old-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.old-{stamp}-{n}")
        os.replace(self.path, target)
        return target

    # -- reading ---------------------------------------------------------------------------------

    def candidates(self) -> list[Path]:
        """Files that may hold the newest checkpoint, newest first: a ``last.ckpt`` that is a
        checkpoint itself (``keep=0``, or written before pointers), then the snapshots."""
        files = [p for _, p in reversed(self.step_files())]
        if self.last.is_file():
            try:
                is_pointer = read_pointer(self.last) is not None
            except CheckpointError:
                is_pointer = True
            if not is_pointer:
                files.insert(0, self.last)
        return files

    def pointer_problem(self) -> str | None:
        """Why ``last.ckpt`` cannot be followed (damaged, dangling, missing), or ``None``."""
        if not self.last.exists():
            return "missing" if self.step_files() else None
        try:
            target = read_pointer(self.last)
        except CheckpointError as exc:
            return exc.reason
        if target is not None and not target.is_file():
            return f"pointing to {target.name}, which is gone"
        return None

    def newest_good(self) -> Found:
        """The newest snapshot that verifies (record, torch load, format, entries), and those skipped."""
        from weakseg.checkpoint.load import checkpoint_from_file

        skipped = []
        for path in self.candidates():
            try:
                return Found(checkpoint_from_file(path), tuple(skipped), self.pointer_problem())
            except CheckpointError as exc:
                skipped.append((path, exc.reason))
        return Found(None, tuple(skipped), self.pointer_problem())

    def repair(self, found: Found) -> None:
        """After choosing ``found``: move the damaged newer snapshots to ``damaged/`` and point
        ``last.ckpt`` at the chosen one (a run continues from a consistent folder)."""
        if found.checkpoint is None:
            return
        chosen = found.checkpoint.file or found.checkpoint.path
        for path, _ in found.skipped:
            (self.path / DAMAGED).mkdir(exist_ok=True)
            for p in (path, record_path(path)):
                if p.exists():
                    os.replace(p, self.path / DAMAGED / p.name)
        if chosen != self.last and self.keep > 0:
            pointed = None
            with contextlib.suppress(CheckpointError):
                pointed = read_pointer(self.last) if self.last.is_file() else None
            if pointed != chosen:
                write_pointer(self.last, chosen, found.checkpoint.step)
        fsync_dir(self.path)
