"""Checkpoint files on disk: atomic writes, a size + sha256 record beside each file, the ``last.ckpt`` pointer.

Every checkpoint ``X.ckpt`` is written under a temporary name, flushed to disk, checked (its size is
the number of bytes torch wrote, and every zip member passes its CRC check) and moved into place with
:func:`os.replace`; then ``X.ckpt.sha256.json`` records its size and sha256 (also written
atomically). A reader compares both before it trusts the file, so a truncated or overwritten
snapshot is reported as damaged instead of failing deep inside torch.

``last.ckpt`` in a run's ``checkpoints/`` folder is a small JSON pointer naming the newest snapshot
(``{"format": "weakseg-checkpoint-pointer/1", "file": "step-00000030.ckpt", "step": 30}``): it
shares no bytes with any snapshot, so damaging it cannot damage one, and every reader of a
checkpoint path follows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from weakseg.errors import WeaksegError

LAST = "last.ckpt"
RECORD_SUFFIX = ".sha256.json"
POINTER_FORMAT = "weakseg-checkpoint-pointer/1"
#: A pointer is a few dozen bytes; anything larger is a checkpoint (or something else).
POINTER_MAX_BYTES = 4096
_CHUNK = 1 << 20


class CheckpointError(WeaksegError):
    """A checkpoint file is missing, damaged or not a weakseg checkpoint.

    ``reason`` is the short diagnosis (``damaged (size 1234 != 5678 recorded)``), the message adds
    the path and what to do.
    """

    def __init__(self, path: str | Path, reason: str, advice: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        self.advice = advice
        super().__init__(f"{path}: {reason}" + (f"; {advice}" if advice else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason, self.advice))


@attrs.frozen
class FileRecord:
    """Size and sha256 of a checkpoint file, as recorded in ``<file>.sha256.json``."""

    file: str
    size: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=1) + "\n"


def fsync_dir(folder: Path) -> None:
    """Make renames inside ``folder`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_name(path: Path) -> Path:
    """The hidden name a file is written under before it is moved to ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sha256_of(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def zip_problem(path: Path) -> str | None:
    """Why ``path`` is not an intact zip archive (torch's format), or ``None``: every member's CRC is checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"not a complete zip archive: {exc}"
    return f"member {bad} fails its CRC check" if bad is not None else None


def record_path(path: Path) -> Path:
    """``X.ckpt`` -> ``X.ckpt.sha256.json``."""
    return path.with_name(path.name + RECORD_SUFFIX)


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically, check the written file and record its size and sha256."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(dict(payload), fh)
            fh.flush()
            os.fsync(fh.fileno())
            written = fh.tell()
        size, digest = sha256_of(tmp)
        problem = f"{size} of {written} bytes on disk" if size != written else zip_problem(tmp)
        if problem:
            raise CheckpointError(path, f"the written file does not read back ({problem})", "check the disk")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    write_text_atomic(record_path(path), FileRecord(path.name, size, digest).to_json())
    fsync_dir(path.parent)
    return path


def read_record(path: Path) -> FileRecord | None:
    """The size/sha256 record of ``path``; ``None`` when there is none (files written before records)."""
    rec = record_path(path)
    if not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text())
        return FileRecord(str(data["file"]), int(data["size"]), str(data["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            path, f"unverifiable (its record {rec.name} is damaged)", "delete the record to load the file unchecked"
        ) from None


def verify_file(path: Path) -> FileRecord | None:
    """Compare ``path`` with its record (size first, then sha256); raise :class:`CheckpointError` if it differs."""
    record = read_record(path)
    if record is None:
        return None
    size = path.stat().st_size
    if size != record.size:
        raise CheckpointError(path, f"damaged (size {size} != {record.size} recorded)")
    if sha256_of(path)[1] != record.sha256:
        raise CheckpointError(path, f"damaged (sha256 differs from the one recorded in {record_path(path).name})")
    return record


# ------------------------------------------------------------------------------------------------
# The last.ckpt pointer
# ------------------------------------------------------------------------------------------------


def write_pointer(pointer: Path, target: Path, step: int) -> None:
    """Make ``pointer`` (``last.ckpt``) name ``target``, a snapshot in the same folder."""
    text = json.dumps({"format": POINTER_FORMAT, "file": target.name, "step": int(step)}) + "\n"
    write_text_atomic(pointer, text)


def is_pointer_like(path: Path) -> bool:
    """True for a small file that is not a torch zip: a pointer, or what is left of one."""
    try:
        if path.stat().st_size > POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:1] in (b"{", b"")


def read_pointer(path: Path) -> Path | None:
    """The snapshot a pointer file names; ``None`` when ``path`` is not a pointer (a real checkpoint).

    A ``last.ckpt`` too small to be a checkpoint that does not parse as a pointer raises
    :class:`CheckpointError` (damaged); other files are left to the checkpoint reader.
    """
    if not is_pointer_like(path):
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != POINTER_FORMAT:
            raise ValueError(data.get("format"))
        name = str(data["file"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        if path.name != LAST:
            return None
        raise CheckpointError(
            path,
            f"damaged (not a readable pointer to a snapshot; {path.stat().st_size} bytes)",
            "pass the run folder instead: its newest good snapshot is used",
        ) from None
    if Path(name).name != name:
        raise CheckpointError(path, f"damaged (names {name!r}, not a file beside it)")
    return path.with_name(name)
