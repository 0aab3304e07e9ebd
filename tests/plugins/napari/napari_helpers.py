"""Helpers of the napari plugin tests (a module of its own so that test files can import it by name)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess

import pytest

REQUIRED = os.environ.get("WEAKSEG_REQUIRE_NAPARI", "") not in ("", "0")


def require(module: str):
    """Import ``module``, or skip the test naming the missing package (an error when napari is required)."""
    if REQUIRED:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[napari,test]'")


def _die_with_parent() -> None:
    """In the child: ask Linux to end it when the test process ends, even if that process crashes."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def start_xvfb() -> tuple[subprocess.Popen, str] | None:
    """An Xvfb server on a free display number: (process, ":N"), or None when Xvfb is not installed."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    read, write = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        return None
    return proc, f":{number}"
